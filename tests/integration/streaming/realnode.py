"""A cri-async server on a real runtime (runc, crun or runsc under conmon) for the streaming
tests: pods, containers and streaming URLs through the real CRI RPCs.

``async with real_node(kind, root, image) as node:`` starts it with the busybox test image
pulled; on the way out every pod is removed and the host must be clean (no mounts, no
process mentioning the run root)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.backends.infra import find_infra_binary
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, StateConfig
from cri_async.network import netns
from cri_async.streaming.client import Transport
from cri_async.testing import CRIServer
from tests.integration.conftest import require, wait_state
from tests.integration.streaming.conftest import Variant
from tests.support import images as im
from tests.support.poll import until
from tests.support.prereq import unavailable
from tests.support.procs import processes_mentioning
from tests.support.registry import LocalRegistry

RUNTIMES = ["runc", "crun", "runsc"]
# Port-forward's third transport: SPDY tunnelled in a WebSocket (client-go's tunnelling dialer).
TUNNEL = Variant("spdy-in-ws", Transport.SPDY_OVER_WEBSOCKET, None)
TAGS = {"runc": "rc", "crun": "cr", "runsc": "rs"}

WEB = b"""#!/bin/sh
cr=$(printf '\\r')
while read -r line && [ -n "$line" ] && [ "$line" != "$cr" ]; do :; done
printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 14\\r\\n\\r\\nhello-from-pod'
"""
"""``/web``: answers one HTTP request on stdin/stdout (``nc -l -p PORT -e /web``)."""


@contextlib.contextmanager
def image(scripts: Mapping[str, bytes]) -> Iterator[str]:
    """The busybox test image plus executable ``scripts`` (path -> content), pushed to a
    registry of its own; its reference."""
    extra = im.layer([im.File(path, data, mode=0o755) for path, data in scripts.items()])
    with LocalRegistry() as reg:
        im.push(reg, "test/streams", im.busybox_image(extra))
        yield reg.ref("test/streams")


def require_runtime(kind: str) -> None:
    require(kind)
    if kind == "runsc" and find_infra_binary() is None:
        unavailable("runsc pods need a static pause binary (apt-get install catatonit)")


@dataclass
class Node:
    kind: str
    srv: CRIServer
    image: str
    run_root: Path

    @property
    def cli(self) -> CRIClient:
        return self.srv.client

    async def pod(
        self, name: str, *, host_network: bool = False
    ) -> tuple[str, pb.PodSandboxConfig]:
        cfg = pod_config(name, host_network=host_network)
        return await self.cli.run_pod(cfg), cfg

    async def container(
        self,
        pod: tuple[str, pb.PodSandboxConfig],
        name: str,
        command: Sequence[str],
        *,
        stdin: bool = False,
        stdin_once: bool = False,
        tty: bool = False,
    ) -> str:
        """A started container of the busybox image, running."""
        cfg = container_config(name, self.image, command=command)
        cfg.stdin, cfg.stdin_once, cfg.tty = stdin, stdin_once, tty
        cid = await self.cli.create_container(pod[0], cfg, pod[1])
        await self.cli.start_container(cid)
        await wait_state(self.cli, cid, pb.CONTAINER_RUNNING)
        return cid

    async def exec_url(
        self,
        cid: str,
        cmd: Sequence[str],
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
    ) -> str:
        req = pb.ExecRequest(
            container_id=cid, cmd=list(cmd), stdin=stdin, stdout=stdout, stderr=stderr, tty=tty
        )
        return (await self.cli.runtime.Exec(req)).url

    async def attach_url(
        self, cid: str, *, stdin: bool = False, stderr: bool = True, tty: bool = False
    ) -> str:
        req = pb.AttachRequest(container_id=cid, stdin=stdin, stdout=True, stderr=stderr, tty=tty)
        return (await self.cli.runtime.Attach(req)).url

    async def forward_url(self, pod: str, ports: Sequence[int] = ()) -> str:
        req = pb.PortForwardRequest(pod_sandbox_id=pod, port=list(ports))
        return (await self.cli.runtime.PortForward(req)).url

    async def serve_in_pod(
        self,
        pod: str,
        port: int,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> asyncio.Server:
        """A TCP server run by this test but listening on 127.0.0.1:``port`` inside the pod's
        network namespace (the socket is made there), as a pod's own server would."""
        assert self.srv.server is not None
        sandbox = self.srv.server.runtime.ctx.sandboxes.peek(pod)
        assert sandbox is not None and sandbox.backend_info.get("netns")

        def listen() -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            return sock

        sock = await netns.call_in_netns(sandbox.backend_info["netns"], listen)
        return await asyncio.start_server(handler, sock=sock)


@contextlib.asynccontextmanager
async def real_node(kind: str, root: Path, image: str) -> AsyncIterator[Node]:
    require_runtime(kind)
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend=kind)},
        images=ImagesConfig(backend="registry"),
    )
    srv = CRIServer(root, config=cfg)
    # A short run root: conmon's attach sockets live below it.
    run_root = Path(f"/run/cs{os.getpid() % 10000}{TAGS[kind]}")
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(root / "state"), run_root=str(run_root), sync="normal"),
    )
    try:
        async with srv:
            await srv.client.pull(image)
            try:
                yield Node(kind, srv, image, run_root)
            finally:
                pods = await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())
                for p in pods.items:
                    await srv.client.runtime.RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=p.id)
                    )
    finally:
        linux.umount(str(run_root / "ns"))  # the pin directory's own private bind mount
        mounts = [m[0] for m in linux.mountinfo() if m[0].startswith((str(run_root), str(root)))]
        if not mounts:
            shutil.rmtree(run_root, ignore_errors=True)
    assert not mounts
    await until(lambda: not processes_mentioning(str(run_root)), timeout=10, interval=0.05)
