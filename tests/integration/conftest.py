from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, pod_config
from cri_async.testing import CRIServer
from tests.support.registry import (  # noqa: F401  (fixtures)
    basic_registry,
    mirror_registry,
    registry,
    registry_factory,
    token_registry,
)


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
