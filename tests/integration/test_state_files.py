"""What the node's other users can see of the state: the roots cannot be listed, and the
database (every container's config, environment included) is root's alone."""

import stat
from pathlib import Path

import pytest

from cri_async.client import container_config, pod_config
from cri_async.testing import CRIServer

pytestmark = pytest.mark.socket


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def test_state_roots_and_database_are_private(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)  # an existing root is tightened too
    async with CRIServer(tmp_path) as srv:
        await srv.client.pull("busybox")
        cfg = pod_config("p")
        pod = await srv.client.run_pod(cfg)
        ccfg = container_config("c", "busybox", env={"TOKEN": "secret"})
        await srv.client.create_container(pod, ccfg, cfg)
        state = Path(srv.config.state.root)
        run = Path(srv.config.state.run_root)
        assert (mode(state), mode(run)) == (0o711, 0o711)
        dbs = sorted(state.glob("state.db*"))
        assert [p.name for p in dbs] == ["state.db", "state.db-shm", "state.db-wal"]
        assert {mode(p) for p in dbs} == {0o600}


@pytest.mark.root
@pytest.mark.registry
async def test_bundle_config_is_private_and_runs(rsrv: CRIServer, busybox_ref: str) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    cfg = pod_config("p")
    pod = await cli.run_pod(cfg)
    ccfg = container_config("c", busybox_ref, command=["sleep", "100"], env={"TOKEN": "s"})
    cid = await cli.create_container(pod, ccfg, cfg)
    await cli.start_container(cid)
    handler = next(Path(rsrv.config.state.run_root).glob(f"*/default/containers/{cid}"))
    assert mode(handler / "config.json") == 0o600
    assert mode(Path(rsrv.config.state.run_root)) == 0o711
