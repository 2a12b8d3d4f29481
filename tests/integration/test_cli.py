"""The `cri-async` command as an operator uses it."""

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cri_async import config
from cri_async.client import container_config, pod_config
from tests.support.poll import until

from .test_restart import Proc

pytestmark = pytest.mark.subprocess


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cri_async.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    out = cli("version")
    assert out.returncode == 0 and out.stdout.startswith("cri-async 0.1.0")


def test_config_default_prints_the_documented_defaults(tmp_path: Path) -> None:
    out = cli("config", "--default")
    assert out.returncode == 0
    assert config.parse(out.stdout) == config.Config()
    path = tmp_path / "c.toml"
    path.write_text(out.stdout)
    assert cli("config", "--check", str(path)).returncode == 0


def test_bad_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nrpc_timout = 5\n")
    out = cli("serve", "--config", str(path))
    assert out.returncode == 2
    assert "server.rpc_timout: unknown key" in out.stderr


async def test_sigterm_lets_inflight_rpcs_finish(tmp_path: Path) -> None:
    p = Proc(tmp_path)
    client = await p.start()
    try:
        mode = stat.S_IMODE(p.sock.stat().st_mode)
        assert mode == 0o660
        await client.pull("busybox")
        cfg = pod_config("p")
        pod = await client.run_pod(cfg)
        cid = await client.create_container(
            pod, container_config("c", "busybox", command=["sleep", "infinity"]), cfg
        )
        await client.start_container(cid)
        slow = asyncio.create_task(client.exec_sync(cid, ["sh", "-c", "sleep 1; echo done"]))
        # The server has the request once its HTTP/2 layer decoded the headers (logged at
        # debug level): only then is SIGTERM "after an accepted RPC".
        await until(
            lambda: "/runtime.v1.RuntimeService/ExecSync" in p.log(), what="ExecSync received"
        )
        assert p.proc is not None
        p.proc.terminate()
        r = await slow  # accepted before SIGTERM, so it completes
        assert r.stdout == b"done\n"
        assert await asyncio.to_thread(p.proc.wait, 20) == 0
        assert not p.sock.exists()
    finally:
        client.close()
        if p.proc is not None and p.proc.poll() is None:  # never leave a server behind
            p.kill9()
        p.sock.unlink(missing_ok=True)


async def test_second_server_on_same_socket_or_state_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = Proc(tmp_path / "a")
    client = await first.start()
    try:
        # Same socket, other state dir: the live socket is not stolen.
        other = tmp_path / "b"
        other.mkdir()
        cfg = other / "c.toml"
        cfg.write_text(
            f'[server]\nsocket = "{first.sock}"\n'
            f'[state]\nroot = "{other}/state"\nrun_root = "{other}/run"\n'
        )
        out = cli("serve", "--config", str(cfg))
        assert out.returncode == 1 and "another server is listening" in out.stderr
        # Same state dir, other socket: the state lock refuses it.
        cfg.write_text(
            f'[server]\nsocket = "{other}/x.sock"\n'
            f'[state]\nroot = "{tmp_path}/a/state"\nrun_root = "{other}/run"\n'
        )
        out = cli("serve", "--config", str(cfg))
        assert out.returncode == 1 and "in use by another cri-async" in out.stderr
        assert (await client.version()).runtime_name == "cri-async"
    finally:
        client.close()
        first.terminate()
        first.sock.unlink(missing_ok=True)


async def test_a_file_in_the_sockets_place_is_not_replaced(tmp_path: Path) -> None:
    p = Proc(tmp_path)
    p.sock.write_text("precious")
    try:
        out = cli("serve", "--config", str(p.config))
        assert out.returncode == 1 and "is not a socket" in out.stderr
        assert p.sock.read_text() == "precious"
    finally:
        p.sock.unlink()


def test_uvloop_switch_without_uvloop_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("uvloop is installed here")
    path = tmp_path / "c.toml"
    path.write_text("[server]\nuvloop = true\n")
    out = cli("serve", "--config", str(path))
    assert out.returncode == 2 and "server.uvloop: uvloop is not installed" in out.stderr
