import dataclasses
import os
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio

from cri_async import linux
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, StateConfig
from cri_async.logs.crilog import Stream, join_records, parse_lines
from cri_async.testing import CRIServer
from tests.support import images as im
from tests.support.poll import until
from tests.support.prereq import need_binary, need_root
from tests.support.registry import (  # noqa: F401  (fixtures)
    LocalRegistry,
    basic_registry,
    mirror_registry,
    registry,
    registry_factory,
    token_registry,
)

RUNTIMES = ["runc", "crun", "shimv2"]
SHIM_RUNC = "io.containerd.runc.v2"


@pytest_asyncio.fixture
async def srv(tmp_path: Path) -> AsyncIterator[CRIServer]:
    async with CRIServer(tmp_path) as s:
        await s.client.pull("busybox")
        yield s


@pytest_asyncio.fixture
async def cli(srv: CRIServer) -> CRIClient:
    return srv.client


async def new_pod(
    cli: CRIClient, name: str = "web", *, logdir: Path | None = None, **kw: object
) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(name, log_directory=str(logdir or ""), **kw)  # type: ignore[arg-type]
    return await cli.run_pod(cfg), cfg


async def wait_state(
    cli: CRIClient, cid: str, state: int, timeout: float = 10.0
) -> pb.ContainerStatus:
    """Poll ContainerStatus until the container is in ``state``; its status then."""

    async def reached() -> pb.ContainerStatus | None:
        st = await cli.container_status(cid)
        return st if st.state == state else None

    name = pb.ContainerState.Name(state)
    return await until(reached, timeout=timeout, interval=0.05, what=f"{cid[:12]} {name}")


async def wait_exit(cli: CRIClient, cid: str, timeout: float = 10.0) -> pb.ContainerStatus:
    return await wait_state(cli, cid, pb.CONTAINER_EXITED, timeout)


async def wait_log(
    path: Path, expected: Mapping[Stream, bytes], timeout: float = 10.0
) -> dict[Stream, bytes]:
    """Poll a CRI log file until every stream in ``expected`` contains what is given; all
    of the file's streams then."""

    def found() -> dict[Stream, bytes] | None:
        if not path.exists():
            return None
        out = join_records(parse_lines(path.read_bytes()))
        ok = all(want in out.get(stream, b"") for stream, want in expected.items())
        return out if ok else None

    return await until(found, timeout=timeout, interval=0.05, what=f"{expected} in {path}")


def require(binary: str) -> None:
    """What a test on a real runtime needs: root, the runtime and conmon (``shimv2``:
    containerd's runc shim and runc)."""
    need_root()
    if binary == "shimv2":
        need_binary("containerd-shim-runc-v2", "Debian's containerd, installed by `make test`")
        need_binary("runc", "installed by `make test`", sbin=True)
        return
    need_binary(binary, "installed by `make test`")
    need_binary("conmon", "installed by `make test`")


def handler_config(kind: str, **kw: object) -> HandlerConfig:
    """A handler on ``kind``: a runtime under conmon, or ``shimv2`` (containerd's runc shim)."""
    if kind == "shimv2":
        return HandlerConfig(backend="shimv2", runtime_type=SHIM_RUNC, **kw)  # type: ignore[arg-type]
    return HandlerConfig(backend=kind, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def busybox_ref() -> Iterator[str]:
    with LocalRegistry() as reg:
        im.push(reg, "test/busybox", im.busybox_image(cmd=("sh",)))
        yield reg.ref("test/busybox")


@pytest_asyncio.fixture(params=RUNTIMES)
async def rsrv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CRIServer]:
    kind = request.param
    require(kind)
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": handler_config(kind)},
        images=ImagesConfig(backend="registry"),
    )
    srv = CRIServer(tmp_path, config=cfg)
    # Short run root: conmon's attach socket path must fit in sun_path.
    run_root = Path(f"/run/crt{os.getpid() % 10000}{kind[0]}")
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    async with srv:
        yield srv
        # Whatever the test left, removing the pods must clean the host up completely.
        for p in (await srv.client.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items:
            await srv.client.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=p.id)
            )
    linux.umount(str(run_root / "ns"))  # the pin directory's own private bind mount
    assert not [m for m in linux.mountinfo() if m[0].startswith((str(run_root), str(tmp_path)))]
    shutil.rmtree(run_root, ignore_errors=True)
