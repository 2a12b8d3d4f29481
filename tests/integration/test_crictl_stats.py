"""crictl stats/statsp against real containers: two calls a sample period (1 s) apart must
see two different readings ("cpu stat is not updated during sample" otherwise).

crictl is not packaged by Debian; these run where a cri-tools release is installed and skip
elsewhere, also in CI (as the streaming interoperability tests do)."""

from __future__ import annotations

import asyncio

import pytest

from cri_async.client import container_config, pod_config
from cri_async.testing import CRIServer
from tests.support.crictl import find_crictls

pytestmark = [pytest.mark.root, pytest.mark.registry]

CRICTLS = find_crictls()
if not CRICTLS:
    pytest.skip("crictl (cri-tools) is not installed", allow_module_level=True)


async def crictl(srv: CRIServer, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        CRICTLS[-1],
        "--runtime-endpoint",
        f"unix://{srv.socket_path}",
        "--timeout",
        "20s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_crictl_stats_and_statsp_see_fresh_samples(rsrv: CRIServer, busybox_ref: str) -> None:
    cli = rsrv.client
    await cli.pull(busybox_ref)
    pcfg = pod_config("crictl-stats")
    pod = await cli.run_pod(pcfg)
    busy = container_config("busy", busybox_ref, command=["sh", "-c", "while :; do :; done"])
    cid = await cli.create_container(pod, busy, pcfg)
    await cli.start_container(cid)
    for _ in range(3):  # a few rounds: each needs its own fresh pair of readings
        rc, out = await crictl(rsrv, "stats", "--id", cid)
        assert rc == 0, out
        assert cid[:13] in out and "busy" in out
        rc, out = await crictl(rsrv, "statsp", "--id", pod)
        assert rc == 0, out
        assert pod[:13] in out
