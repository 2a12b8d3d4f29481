"""`cri-async install-service` output passes `systemd-analyze verify`; a real `cri-async serve`
tells $NOTIFY_SOCKET READY=1 only once the CRI socket answers, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cri_async.client import CRIClient

pytestmark = pytest.mark.subprocess


async def api_version(sock: Path) -> str:
    client = CRIClient(sock)
    try:
        return (await client.version()).runtime_api_version
    finally:
        client.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cri_async.cli", *args], capture_output=True, text=True, timeout=60
    )


def require_systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("needs systemd-analyze (Debian's systemd, installed by `make test`)")
        pytest.skip("needs systemd-analyze")
    return path


def verify(analyze: str, unit: Path) -> list[str]:
    """systemd-analyze's complaints about ``unit`` (it exits 0 on many of them)."""
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    mine = [line for line in lines if "cri-async.service" in line]
    assert out.returncode == 0 or mine, lines
    return mine


def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    args = (
        "--unit-dir",
        str(tmp_path / "units"),
        "--env-file",
        str(tmp_path / "default/cri-async"),
        "--config",
        str(tmp_path / "etc/config.toml"),
    )
    out = cli("install-service", *args)
    assert out.returncode == 0, out.stderr
    unit = tmp_path / "units/cri-async.service"
    assert f"wrote {unit}" in out.stdout
    assert verify(analyze, unit) == []
    # The config it wrote is the documented default, and the dry run prints the same files.
    assert cli("config", "--check", str(tmp_path / "etc/config.toml")).returncode == 0
    dry = cli("install-service", "--dry-run", *args)
    assert unit.read_text() in dry.stdout
    assert (tmp_path / "default/cri-async").read_text() in dry.stdout

    # The check has teeth: a bad value and a missing executable are both reported.
    text = unit.read_text()
    unit.write_text(text.replace("KillMode=process", "KillMode=sometimes"))
    assert any("KillMode" in line or "kill mode" in line for line in verify(analyze, unit))
    unit.write_text(text.replace("ExecStart=/", "ExecStart=/nonexistent/"))
    assert any("not executable" in line for line in verify(analyze, unit))


def test_serve_notifies_ready_after_the_socket_answers_and_stopping_on_sigterm(
    tmp_path: Path,
) -> None:
    sock = Path(f"/tmp/cri-notify-{os.getpid()}.sock")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[server]\nsocket = "{sock}"\n'
        f'[state]\nroot = "{tmp_path}/state"\nrun_root = "{tmp_path}/run"\n'
        '[images]\nbackend = "fake"\n[runtimes.""]\nbackend = "fake"\n'
        f'[network]\nconf_dirs = ["{tmp_path}/cni"]\n'
    )
    notify = tmp_path / "notify.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(notify))
    rx.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cri_async.cli", "serve", "--config", str(cfg)],
        env=env,
        stderr=open(tmp_path / "server.log", "wb"),  # noqa: SIM115
    )
    try:
        ready = rx.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        assert f"STATUS=serving CRI on unix://{sock}" in ready
        # At the moment READY=1 arrives, a CRI call succeeds on the first try.
        assert asyncio.run(api_version(sock)) == "v1"
        proc.send_signal(signal.SIGTERM)
        assert rx.recv(4096) == b"STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        rx.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)
