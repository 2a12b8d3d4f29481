"""Shim binary lookup, argv/env, what `start` prints, and running start/delete (fake shims)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from cri_async.api.containerd.task.v2 import shim_pb2
from cri_async.backends.shimv2.bootstrap import (
    Bootstrap,
    ShimCommandError,
    ShimNotFound,
    binary_name,
    parse_start_output,
    resolve_binary,
    run_delete,
    run_start,
    shim_argv,
    shim_env,
)


@pytest.mark.parametrize(
    ("runtime_type", "binary"),
    [
        ("io.containerd.runc.v2", "containerd-shim-runc-v2"),
        ("io.containerd.kata.v2", "containerd-shim-kata-v2"),
        ("io.containerd.runsc.v1", "containerd-shim-runsc-v1"),
        ("io.containerd.wasmtime.v1", "containerd-shim-wasmtime-v1"),
        ("kata.v2", "containerd-shim-kata-v2"),
    ],
)
def test_binary_name_takes_the_last_two_parts(runtime_type: str, binary: str) -> None:
    assert binary_name(runtime_type) == binary


@pytest.mark.parametrize("bad", ["runc", "", "io.containerd.runc.", "a/b.v2"])
def test_binary_name_refuses_malformed_types(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid runtime type"):
        binary_name(bad)


def _executable(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_resolve_binary_on_path_or_absolute(tmp_path: Path) -> None:
    shim = _executable(tmp_path / "containerd-shim-kata-v2", "#!/bin/sh\n")
    assert resolve_binary("io.containerd.kata.v2", search_path=str(tmp_path)) == str(shim)
    assert resolve_binary(str(shim)) == str(shim)
    with pytest.raises(ShimNotFound, match="containerd-shim-runsc-v1"):
        resolve_binary("io.containerd.runsc.v1", search_path=str(tmp_path))
    with pytest.raises(ShimNotFound, match="not executable"):
        resolve_binary(str(tmp_path / "missing"))


def test_argv_and_env_as_containerd_builds_them() -> None:
    common = {"namespace": "k8s.io", "address": "/run/x/events.sock", "publish_binary": "/p"}
    assert shim_argv("/bin/shim", **common, id="c1", action="start") == [
        "/bin/shim", "-namespace", "k8s.io", "-address", "/run/x/events.sock",
        "-publish-binary", "/p", "-id", "c1", "start",
    ]  # fmt: skip
    assert shim_argv("/bin/shim", **common, id="c1", action="delete", bundle="/b/c1", debug=True)[
        -6:
    ] == ["-debug", "-id", "c1", "-bundle", "/b/c1", "delete"]
    env = shim_env({"PATH": "/bin"}, ttrpc_address="/t", grpc_address="/g", namespace="ns")
    assert env == {
        "PATH": "/bin",
        "GOMAXPROCS": "2",
        "TTRPC_ADDRESS": "/t",
        "GRPC_ADDRESS": "/g",
        "NAMESPACE": "ns",
        "MAX_SHIM_VERSION": "2",
    }


def test_parse_start_output_forms() -> None:
    addr = "unix:///run/containerd/s/" + "ab" * 32
    assert parse_start_output(addr.encode()) == Bootstrap(addr, 2, "ttrpc")
    assert parse_start_output(f"{addr}\n".encode()) == Bootstrap(addr, 2)
    v3 = json.dumps({"version": 3, "address": addr, "protocol": "ttrpc"}).encode()
    assert parse_start_output(v3) == Bootstrap(addr, 3, "ttrpc")
    v2 = json.dumps({"version": 2, "address": addr}).encode()
    assert parse_start_output(v2) == Bootstrap(addr, 2, "ttrpc")
    with pytest.raises(ValueError, match="only ttrpc"):
        parse_start_output(json.dumps({"version": 3, "address": addr, "protocol": "grpc"}).encode())
    with pytest.raises(ValueError, match="version 4"):
        parse_start_output(json.dumps({"version": 4, "address": addr}).encode())
    with pytest.raises(ValueError, match="incomplete"):
        parse_start_output(b'{"version": 3}')
    with pytest.raises(ValueError, match="malformed"):
        parse_start_output(b"{nope")
    with pytest.raises(ValueError, match="no address"):
        parse_start_output(b" \n")
    with pytest.raises(ValueError, match="not an address"):
        parse_start_output(b"panic: something went wrong")


def test_bootstrap_json_round_trips() -> None:
    b = Bootstrap("unix:///s", 3)
    assert parse_start_output(b.to_json().encode()) == b


async def test_run_start_passes_argv_cwd_env_stdin_and_reads_the_address(tmp_path: Path) -> None:
    bundle = tmp_path / "c1"
    bundle.mkdir()
    shim = _executable(
        tmp_path / "shim",
        textwrap.dedent(
            """\
            #!/bin/sh
            printf '%s\\n' "$@" > args
            pwd > cwd
            echo "$TTRPC_ADDRESS" > ttrpc
            cat > stdin
            printf 'unix:///run/test.sock'
            """
        ),
    )
    env = shim_env(os.environ, ttrpc_address="/ev.sock", grpc_address="/ev.sock", namespace="n")
    argv = shim_argv(str(shim), namespace="n", address="/ev.sock", publish_binary="/p", id="c1",
                     action="start")  # fmt: skip
    boot = await run_start(argv, bundle=str(bundle), env=env, options=b"\x0a\x01x")
    assert boot == Bootstrap("unix:///run/test.sock")
    assert (bundle / "args").read_text().split() == argv[1:]
    assert (bundle / "cwd").read_text().strip() == str(bundle)
    assert (bundle / "ttrpc").read_text().strip() == "/ev.sock"
    assert (bundle / "stdin").read_bytes() == b"\x0a\x01x"


async def test_run_start_does_not_wait_for_a_daemon_holding_stdout(tmp_path: Path) -> None:
    """A shim whose daemon keeps the start command's stdout open must not block us."""
    shim = _executable(
        tmp_path / "shim",
        "#!/bin/sh\nsleep 1000 &\necho $! > daemon.pid\nprintf 'unix:///run/d.sock'\n",
    )
    try:
        boot = await run_start([str(shim), "start"], bundle=str(tmp_path), env=os.environ)
        assert boot.address == "unix:///run/d.sock"
    finally:
        os.kill(int((tmp_path / "daemon.pid").read_text()), signal.SIGKILL)


async def test_run_start_failures_carry_what_the_shim_said(tmp_path: Path) -> None:
    failing = _executable(tmp_path / "fail", "#!/bin/sh\necho 'bundle is broken' >&2\nexit 3\n")
    with pytest.raises(ShimCommandError, match=r"exit 3.*bundle is broken"):
        await run_start([str(failing), "start"], bundle=str(tmp_path), env=os.environ)
    silent = _executable(tmp_path / "silent", "#!/bin/sh\necho oops >&2\n")
    with pytest.raises(ShimCommandError, match=r"no address.*oops"):
        await run_start([str(silent), "start"], bundle=str(tmp_path), env=os.environ)
    hung = _executable(tmp_path / "hung", "#!/bin/sh\necho $$ > hung.pid\nexec sleep 1000\n")
    with pytest.raises(ShimCommandError, match="did not finish"):
        await run_start([str(hung), "start"], bundle=str(tmp_path), env=os.environ, timeout=0.5)
    pid = int((tmp_path / "hung.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped


async def test_run_delete_decodes_the_delete_response(tmp_path: Path) -> None:
    resp = shim_pb2.DeleteResponse(pid=42, exit_status=137)
    resp.exited_at.FromNanoseconds(1_700_000_000_123_456_789)
    (tmp_path / "resp").write_bytes(resp.SerializeToString())
    shim = _executable(
        tmp_path / "shim",
        f"#!{sys.executable}\nimport sys\n"
        "sys.stdout.buffer.write(open('resp', 'rb').read())\n"
        "print('cleanup warning', file=sys.stderr)\n",
    )
    got = await run_delete([str(shim), "delete"], bundle=str(tmp_path), env=os.environ)
    assert (got.pid, got.exit_status, got.exited_at_ns) == (42, 137, 1_700_000_000_123_456_789)
    broken = _executable(tmp_path / "broken", "#!/bin/sh\nprintf '\\377\\377'\n")
    with pytest.raises(ShimCommandError, match="no DeleteResponse"):
        await run_delete([str(broken), "delete"], bundle=str(tmp_path), env=os.environ)
