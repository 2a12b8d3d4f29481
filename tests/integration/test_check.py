"""`cri-async check` as an operator runs it, on this host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cri_async.network.cniconf import DEFAULT_CONFLIST

from .conftest import require

pytestmark = pytest.mark.subprocess


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cri_async.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(tmp_path: Path, extra: str, bin_dirs: str) -> Path:
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d/10-cri-async.conflist").write_text(DEFAULT_CONFLIST)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[server]\nsocket = "{tmp_path}/cri.sock"\n'
        f'[state]\nroot = "{tmp_path}/state"\nrun_root = "{tmp_path}/run"\n'
        f'[network]\nconf_dirs = ["{tmp_path}/net.d"]\nbin_dirs = {bin_dirs}\n' + extra
    )
    return cfg


def test_check_names_each_missing_prerequisite_and_fails(tmp_path: Path) -> None:
    (tmp_path / "empty-bin").mkdir()
    cfg = write_config(
        tmp_path,
        '[runtime]\nconmon = "/nonexistent/conmon"\n'
        '[runtimes.""]\nbackend = "runc"\nbinary = "/nonexistent/runc"\n'
        '[runtimes.gvisor]\nbackend = "runsc"\nbinary = "/nonexistent/runsc"\n',
        f'["{tmp_path}/empty-bin"]',
    )
    out = check(cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert 'MISSING handler "" (runc): /nonexistent/runc not found' in lines
    assert 'MISSING handler "gvisor" (runsc): /nonexistent/runsc not found' in lines
    assert "        fix: apt-get install runsc" in lines
    assert "MISSING conmon: /nonexistent/conmon not found" in lines
    assert any(
        line.startswith("MISSING CNI plugins: bridge, host-local, loopback, portmap not found")
        for line in lines
    )


def test_check_passes_on_a_prepared_host(tmp_path: Path) -> None:
    require("runc")
    cfg = write_config(tmp_path, "", '["/opt/cni/bin", "/usr/lib/cni"]')
    out = check(cfg)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[-1].startswith("0 missing")
    assert "ok      CNI plugins: loopback, bridge, host-local, portmap" in out.stdout
