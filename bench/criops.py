"""CRI calls as kubelet makes them, timed from the client, for any runtime's socket.

The same ``CRIClient`` (grpclib, one HTTP/2 connection) drives cri-async and containerd.
Pods get a ``cgroup_parent`` under the bench's own cgroup (as kubelet gives one under
``kubepods``), so that whatever a runtime leaves there can be found and removed. Containers
run ``sleep`` and are stopped with ``timeout=0`` (SIGKILL at once: ``sleep`` as pid 1
ignores SIGTERM, so a grace period would only measure the timeout); both runtimes then
kill without a grace period.

The images: ``busybox`` (the host's static busybox) and a ``pause`` image (the host's static
catatonit in pause mode, as containerd's sandbox image), pushed to the local registry under
the mirrored names that both runtimes resolve through ``hosts.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from daemons import PAUSE_REF

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from tests.support import images as im
from tests.support.registry import LocalRegistry

T = TypeVar("T")
RPC_TIMEOUT = 120.0
BUSYBOX_REF = "registry.k8s.io/crbench/busybox:1.0"
CATATONIT = "/usr/bin/catatonit"


def push_images(reg: LocalRegistry) -> im.BuiltImage:
    """Push busybox and pause; the busybox image (the floor unpacks the same layers)."""
    busybox = im.busybox_image(cmd=("sh",))
    pause = im.build_image(
        [im.layer([im.HostFile("pause", CATATONIT, mode=0o755)])],
        entrypoint=["/pause", "-P"],
        user="65535:65535",
    )
    im.push(reg, "crbench/busybox", busybox, tag="1.0")
    im.push(reg, "pause", pause, tag=PAUSE_REF.rsplit(":", 1)[1])
    return busybox


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    async with asyncio.timeout(RPC_TIMEOUT):
        r = await aw
    return r, time.perf_counter() - t0


async def sample(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """``n`` sequential calls of ``fn``, each timed (seconds)."""
    out = []
    for _ in range(n):
        out.append((await timed(fn()))[1])
    return out


@dataclass
class Pods:
    """Pods and containers of one runtime, named uniquely, under ``cgroup``."""

    cli: CRIClient
    cgroup: str  # e.g. "crbench-1a2b/cri-async": each pod gets <cgroup>/pod<n>
    logs: str  # log_directory root
    image: str = BUSYBOX_REF
    host_network: bool = False
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def pod_config(self, prefix: str) -> pb.PodSandboxConfig:
        n = next(self.counter)
        name = f"{prefix}-{n}"
        cfg = pod_config(name, log_directory=f"{self.logs}/{name}", host_network=self.host_network)
        cfg.linux.cgroup_parent = f"/{self.cgroup}/pod{n}"
        return cfg

    def ctr_config(self, name: str = "c") -> pb.ContainerConfig:
        cmd = ["sleep", "100000"]
        return container_config(name, self.image, command=cmd, log_path=f"{name}.log")

    async def run_pod(self, prefix: str) -> tuple[str, pb.PodSandboxConfig, float]:
        cfg = self.pod_config(prefix)
        pod, t = await timed(self.cli.run_pod(cfg))
        return pod, cfg, t

    async def add_container(
        self, pod: str, cfg: pb.PodSandboxConfig, name: str = "c"
    ) -> tuple[str, float, float]:
        cid, t_create = await timed(self.cli.create_container(pod, self.ctr_config(name), cfg))
        _, t_start = await timed(self.cli.start_container(cid))
        return cid, t_create, t_start

    async def up(self, prefix: str, containers: int = 1) -> tuple[str, list[str], dict[str, float]]:
        """A pod with ``containers`` running containers; the first container's timings."""
        pod, cfg, t_run = await self.run_pod(prefix)
        cids, t = [], {"run_pod": t_run}
        for i in range(containers):
            cid, t_create, t_start = await self.add_container(pod, cfg, f"c{i}")
            cids.append(cid)
            t.setdefault("create", t_create)
            t.setdefault("start", t_start)
        return pod, cids, t

    async def stop_remove_container(self, cid: str) -> tuple[float, float]:
        rt = self.cli.runtime
        stop = pb.StopContainerRequest(container_id=cid, timeout=0)
        _, t_stop = await timed(rt.StopContainer(stop))
        _, t_rm = await timed(rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid)))
        return t_stop, t_rm

    async def down(self, pod: str, cids: list[str]) -> dict[str, float]:
        rt = self.cli.runtime
        t: dict[str, float] = {}
        for cid in cids:
            t_stop, t_rm = await self.stop_remove_container(cid)
            t.setdefault("stop", t_stop)
            t.setdefault("remove", t_rm)
        stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod)
        _, t["stop_pod"] = await timed(rt.StopPodSandbox(stop))
        _, t["remove_pod"] = await timed(
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        )
        return t

    async def many_up(self, prefix: str, n: int, at_once: int = 8) -> list[tuple[str, list[str]]]:
        """``n`` pods with a container each, ``at_once`` in flight (setup, untimed)."""
        sem = asyncio.Semaphore(at_once)

        async def one() -> tuple[str, list[str]]:
            async with sem:
                pod, cids, _ = await self.up(prefix)
                return pod, cids

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def remove_all(self, at_once: int = 8) -> int:
        """Stop and remove every pod the runtime knows (and so its containers)."""
        rt = self.cli.runtime
        pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
        ctrs = (await rt.ListContainers(pb.ListContainersRequest())).containers
        sem = asyncio.Semaphore(at_once)

        async def one(pod: str) -> None:
            async with sem, asyncio.timeout(RPC_TIMEOUT):
                for c in ctrs:
                    if c.pod_sandbox_id == pod:
                        with contextlib.suppress(Exception):
                            await rt.StopContainer(
                                pb.StopContainerRequest(container_id=c.id, timeout=0)
                            )
                await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
                await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))

        await asyncio.gather(*(one(p.id) for p in pods))
        return len(pods)


async def counts(cli: CRIClient) -> tuple[int, int, int, int]:
    """(pods, ready pods, containers, running containers) as the runtime lists them."""
    rt = cli.runtime
    pods = (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items
    ctrs = (await rt.ListContainers(pb.ListContainersRequest())).containers
    ready = sum(p.state == pb.SANDBOX_READY for p in pods)
    running = sum(c.state == pb.CONTAINER_RUNNING for c in ctrs)
    return len(pods), ready, len(ctrs), running
