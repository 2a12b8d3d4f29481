"""The systemd unit text and sd_notify datagrams (no systemd needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cri_async import sdnotify
from cri_async.service_unit import UnitOptions, install, render_env, render_unit


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    return keys


def test_unit_keeps_containers_across_restarts_and_waits_for_readiness() -> None:
    o = UnitOptions(binary="/usr/bin/cri-async", env_file="/etc/default/x", limit_nofile=4096)
    k = unit_keys(render_unit(o))
    assert k["Type"] == ["notify"]
    assert k["KillMode"] == ["process"]
    assert k["Delegate"] == ["yes"]
    assert k["LimitNOFILE"] == ["4096"]
    assert k["EnvironmentFile"] == ["/etc/default/x"]
    assert k["ExecStart"] == ["/usr/bin/cri-async serve --config ${CRI_ASYNC_CONFIG}"]
    env = unit_keys(render_env(UnitOptions("/b", config="/etc/c.toml")))
    assert env["CRI_ASYNC_CONFIG"] == ["/etc/c.toml"]


def test_install_writes_the_unit_and_keeps_the_operators_files(tmp_path: Path) -> None:
    o = UnitOptions("/b", env_file=str(tmp_path / "env"), config=str(tmp_path / "c/config.toml"))
    first = install(o, tmp_path / "units", "# config\n")
    assert [w.action for w in first] == ["wrote", "wrote", "wrote"]
    assert (tmp_path / "c/config.toml").read_text() == "# config\n"
    (tmp_path / "env").write_text("CRI_ASYNC_CONFIG=/mine\n")
    second = install(o, tmp_path / "units", "# other\n")
    assert [w.action for w in second] == ["wrote", "kept", "kept"]
    assert (tmp_path / "env").read_text() == "CRI_ASYNC_CONFIG=/mine\n"
    assert (tmp_path / "units/cri-async.service").read_text() == render_unit(o)


def test_notify_address() -> None:
    assert sdnotify.notify_address({}) is None
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "@sd/x"}) == "\0sd/x"
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "/run/n"}) == "/run/n"
    assert sdnotify.notify_address({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert sdnotify.notify("READY=1", {}) is False


def test_notify_sends_one_datagram_to_a_path_or_abstract_socket(tmp_path: Path) -> None:
    for addr, env in (
        (str(tmp_path / "n.sock"), str(tmp_path / "n.sock")),
        (f"\0cri-async-test-{os.getpid()}", f"@cri-async-test-{os.getpid()}"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
            rx.bind(addr)
            assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": env})
            assert rx.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_to_a_dead_socket_reports_false(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
