"""conmon + runc/crun: create, start, exit codes, logs, signals, exec-sync, ctl fifo, attach,
update, OOM, delete; every test checks in teardown that nothing is left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from cri_async.backends.ocicli import RuntimeCLIError
from cri_async.logs.crilog import Stream, join_records, parse_lines
from cri_async.monitor.conmon import SUN_PATH_MAX, Conmon, ConmonError, ExecOutcome
from tests.support.poll import until
from tests.support.procs import catches, proc_state

from .conftest import CGROUP_PARENT, CGROUP_ROOT, Env, cgroup_dirs, lexists, list_dir

SLEEP = ["sleep", "100"]


def records(path: Path) -> dict[Stream, list[tuple[bool, bytes]]]:
    out: dict[Stream, list[tuple[bool, bytes]]] = {s: [] for s in Stream}
    for r in parse_lines(path.read_bytes()):
        out[r.stream].append((r.partial, r.content))
    return out


def cgroup_procs(controller: str, cid: str) -> list[int]:
    path = CGROUP_ROOT / controller / CGROUP_PARENT / cid / "cgroup.procs"
    return [int(p) for p in path.read_text().split()]


async def test_exit_code_log_and_finished_at(env: Env) -> None:
    t0 = time.time_ns()
    ctr = await env.run(
        "exit7",
        ["sh", "-c", "echo out1; echo err1 >&2; printf abc; sleep 0.2; echo def; exit 7"],
    )
    assert ctr.pid > 0
    info = await env.wait_exit(ctr)
    assert (info.exit_code, info.oom) == (7, False)
    assert t0 < info.finished_at <= time.time_ns()
    assert env.conmon.exit_info(ctr.cid, ctr.bundle, env.exit_dir) == info
    # Each stream keeps its order; the two pipes are read independently.
    assert records(ctr.log) == {
        Stream.STDOUT: [(False, b"out1"), (True, b"abc"), (False, b"def")],
        Stream.STDERR: [(False, b"err1")],
    }
    assert (ctr.bundle / "exit").read_text().strip() == "7"
    # The exit-dir copy follows the persist-dir one within microseconds.
    exit_file = env.exit_dir / ctr.cid
    assert await until(lambda: exit_file.exists() and exit_file.read_text().strip()) == "7"
    state = await env.runtime.state(ctr.cid)
    assert state is not None and state["status"] == "stopped"
    await env.remove(ctr)


async def test_kill_sigterm_and_sigkill(env: Env) -> None:
    # PID 1 of a pid namespace ignores signals it has no handler for, even from the host,
    # so the SIGTERM container traps it (as real workloads do); SIGKILL always lands.
    term = await env.run("term", ["sh", "-c", "trap 'exit 143' TERM; sleep 100 & wait"])
    kill = await env.run("kill", SLEEP)
    assert env.conmon.exit_info(term.cid, term.bundle, env.exit_dir) is None
    await until(lambda: catches(term.pid, signal.SIGTERM), what="sh to install its TERM trap")
    await env.runtime.kill(term.cid, signal.SIGTERM)
    await env.runtime.kill(kill.cid, signal.SIGKILL)
    assert (await env.wait_exit(term)).exit_code == 143
    assert (await env.wait_exit(kill)).exit_code == 137
    # Killing a stopped container is not an error.
    await env.runtime.kill(kill.cid, signal.SIGKILL)
    await env.runtime.kill(kill.cid, signal.SIGKILL, all=True)
    for ctr in (term, kill):
        await env.remove(ctr)


async def test_supervising_says_whether_the_containers_conmon_runs(env: Env) -> None:
    """What startup asks of each container instead of the runtime's ``state``."""
    ctr = await env.run("sup", SLEEP)
    other = await env.run("other", SLEEP)
    assert env.conmon.supervising(ctr.cid, ctr.bundle)
    # Another container's conmon (e.g. a recycled pid in a stale pid file) is not this one.
    assert not env.conmon.supervising(ctr.cid, other.bundle)
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    await env.wait_exit(ctr)
    conmon_pid = env.conmon.conmon_pid(ctr.bundle)
    assert conmon_pid is not None
    await until(lambda: proc_state(conmon_pid) is None, what="the exited conmon to be reaped")
    assert not env.conmon.supervising(ctr.cid, ctr.bundle)
    (ctr.bundle / "conmon.pid").unlink()
    assert not env.conmon.supervising(ctr.cid, ctr.bundle)
    await env.runtime.kill(other.cid, signal.SIGKILL)
    await env.wait_exit(other)
    for c in (ctr, other):
        await env.remove(c)


async def test_exec_sync(env: Env, tmp_path: Path) -> None:
    ctr = await env.run("exec", SLEEP)
    proc = {
        "args": ["sh", "-c", "echo hi; echo err >&2; printf tail; exit 3"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
    }
    got = await env.conmon.exec_sync(ctr.cid, proc, timeout=10, workdir=tmp_path / "x1")
    assert got == ExecOutcome(3, b"hi\ntail", b"err\n", False)

    # Concurrent execs may share a workdir (each call gets its own directory below it).
    many = await asyncio.gather(
        *(
            env.conmon.exec_sync(
                ctr.cid,
                dict(proc, args=["sh", "-c", f"echo {i}; exit {i}"]),
                timeout=10,
                workdir=tmp_path / "shared",
            )
            for i in range(4)
        )
    )
    assert many == [ExecOutcome(i, f"{i}\n".encode(), b"", False) for i in range(4)]
    assert list_dir(tmp_path / "shared") == []

    # Each stream is capped on its own.
    big = dict(proc, args=["sh", "-c", "echo 0123456789; echo abcdefghij >&2"])
    got = await env.conmon.exec_sync(ctr.cid, big, timeout=10, workdir=tmp_path / "x2", limit=4)
    assert got == ExecOutcome(0, b"0123", b"abcd", False)

    # Timeout: the exec'd process and all it started die, even a child in its own session
    # (outside the process group conmon's -T would kill).
    slow = dict(proc, args=["sh", "-c", "echo started; setsid sleep 30 & sleep 31"])
    t0 = time.monotonic()
    got = await env.conmon.exec_sync(ctr.cid, slow, timeout=1, workdir=tmp_path / "x3")
    assert (got.exit_code, got.stdout, got.timed_out) == (-1, b"started\n", True)
    assert 1 <= time.monotonic() - t0 < 3
    await until(
        lambda: cgroup_procs("pids", ctr.cid) == [ctr.pid],
        what="the timed-out exec's processes to leave the container's cgroup",
    )
    state = await env.runtime.state(ctr.cid)
    assert state is not None and state["status"] == "running"

    # With a tty both streams arrive as one, and lines end in \r\n.
    tty = dict(proc, terminal=True, args=["sh", "-c", "echo hi; echo err >&2"])
    got = await env.conmon.exec_sync(ctr.cid, tty, timeout=10, workdir=tmp_path / "x5")
    assert got == ExecOutcome(0, b"hi\r\nerr\r\n", b"", False)

    with pytest.raises(ConmonError, match="nonexistent"):
        await env.conmon.exec_sync(
            ctr.cid, dict(proc, args=["/nonexistent"]), timeout=10, workdir=tmp_path / "x4"
        )
    await env.remove(ctr)


async def test_reopen_log_after_rename(env: Env) -> None:
    ctr = await env.run(
        "rotate", ["sh", "-c", "i=0; while :; do echo line$i; i=$((i+1)); sleep 0.05; done"]
    )
    await env.wait_log(ctr.log, b"line1\n")
    rotated = ctr.log.with_suffix(".1")
    ctr.log.rename(rotated)
    await env.conmon.reopen_log(ctr.bundle, str(ctr.log))
    assert ctr.log.exists()  # the reopen is done when the call returns
    await env.wait_log(ctr.log, b"stdout F line")
    old = join_records(parse_lines(rotated.read_bytes()))[Stream.STDOUT].split()
    new = join_records(parse_lines(ctr.log.read_bytes()))[Stream.STDOUT].split()
    # Nothing lost or doubled across the rotation.
    seq = [int(w.removeprefix(b"line")) for w in old + new]
    assert seq == list(range(len(seq)))
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    await env.wait_exit(ctr)
    await env.wait_conmon_gone(ctr)
    with pytest.raises(ConmonError, match="not running"):
        await env.conmon.reopen_log(ctr.bundle, str(ctr.log))
    await env.remove(ctr)


async def test_reopen_log_waits_for_conmon_to_act(env: Env) -> None:
    """conmon handles the ctl fifo in its own loop: a reopen returns only once conmon has
    made the new file, however late it gets to it (here: it is stopped meanwhile)."""
    ctr = await env.run("slowreopen", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
    await env.wait_log(ctr.log, b"tick")
    ctr.log.rename(ctr.log.with_suffix(".1"))
    conmon_pid = env.conmon.conmon_pid(ctr.bundle)
    assert conmon_pid is not None
    os.kill(conmon_pid, signal.SIGSTOP)
    try:
        reopen = asyncio.create_task(env.conmon.reopen_log(ctr.bundle, str(ctr.log)))
        done, _ = await asyncio.wait({reopen}, timeout=0.3)
        # A stopped conmon cannot have reopened anything: the call must still be waiting.
        assert not done and not ctr.log.exists()
    finally:
        os.kill(conmon_pid, signal.SIGCONT)
    await reopen
    assert ctr.log.exists()
    await env.wait_log(ctr.log, b"stdout F tick")
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    await env.wait_exit(ctr)
    await env.remove(ctr)


async def test_tty_log_and_resize(env: Env) -> None:
    script = (
        "for i in $(seq 100); do s=$(stty size 2>/dev/null); "
        '[ "$s" = "40 100" ] && { echo "size $s"; exit 0; }; sleep 0.05; done; exit 1'
    )
    ctr = await env.create(env.bundle("tty", ["sh", "-c", script], tty=True), tty=True)
    await env.runtime.start(ctr.cid)
    await env.conmon.resize(ctr.bundle, 40, 100)
    info = await env.wait_exit(ctr)
    assert info.exit_code == 0
    recs = records(ctr.log)
    assert recs[Stream.STDERR] == []  # a tty has only one stream
    # The tty turns \n into \r\n; conmon splits on \n only.
    assert (False, b"size 40 100\r") in recs[Stream.STDOUT]
    await env.remove(ctr)


async def test_attach_socket(env: Env) -> None:
    ctr = env.bundle("attach", ["sh", "-c", "read x; echo got:$x; echo bye >&2"])
    ctr = await env.create(ctr, stdin=True)
    link = env.conmon.attach_link(ctr.cid)
    assert link.resolve() == env.conmon.attach_socket(ctr.bundle).resolve()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    with sock:
        await loop.sock_connect(sock, str(link))
        await env.runtime.start(ctr.cid)
        await loop.sock_sendall(sock, b"hello\n")
        frames: list[bytes] = []
        async with asyncio.timeout(5):
            while len(frames) < 2:
                frames.append(await loop.sock_recv(sock, 65536))
    assert sorted(frames) == [b"\x02got:hello\n", b"\x03bye\n"]
    assert (await env.wait_exit(ctr)).exit_code == 0
    await env.remove(ctr)


async def test_update_memory_limit(env: Env) -> None:
    ctr = await env.run("update", SLEEP)
    limit_file = CGROUP_ROOT / "memory" / CGROUP_PARENT / ctr.cid / "memory.limit_in_bytes"
    before = int(limit_file.read_text())
    await env.runtime.update(ctr.cid, {"memory": {"limit": 64 << 20}})
    assert int(limit_file.read_text()) == 64 << 20 != before
    await env.runtime.update(ctr.cid, {"pids": {"limit": 50}})
    pids_max = CGROUP_ROOT / "pids" / CGROUP_PARENT / ctr.cid / "pids.max"
    assert pids_max.read_text().strip() == "50"
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    await env.wait_exit(ctr)
    await env.remove(ctr)


async def test_oom_kill_is_reported(env: Env) -> None:
    ctr = await env.run(
        "oom",
        ["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
        resources={"memory": {"limit": 32 << 20}},
    )
    info = await env.wait_exit(ctr, timeout=20)
    assert info.oom and info.exit_code == 137
    await env.remove(ctr)


async def test_delete_is_idempotent(env: Env) -> None:
    ctr = await env.create(env.bundle("del", SLEEP))
    state = await env.runtime.state(ctr.cid)
    assert state is not None and state["status"] == "created" and state["pid"] == ctr.pid
    assert ctr.cid in [c["id"] for c in await env.runtime.list()]
    await env.runtime.delete(ctr.cid, force=True)
    assert await env.runtime.state(ctr.cid) is None
    await env.runtime.delete(ctr.cid)
    await env.runtime.delete(ctr.cid, force=True)
    await env.runtime.kill(ctr.cid, signal.SIGKILL)
    assert ctr.cid not in [c["id"] for c in await env.runtime.list()]
    # The container died with its runtime state; conmon records the exit.
    assert (await env.wait_exit(ctr)).exit_code == 137
    env.conmon.remove(ctr.cid, env.exit_dir)
    assert not lexists(os.path.join(env.conmon.socket_dir, ctr.cid))


async def test_create_failure_carries_runtime_message(env: Env) -> None:
    ctr = env.bundle("fail", SLEEP)
    cfg = (ctr.bundle / "config.json").read_text()
    # CAP_SYS_RESOURCE is outside this VM's bounding set, so every runtime refuses it.
    (ctr.bundle / "config.json").write_text(cfg.replace("CAP_CHOWN", "CAP_SYS_RESOURCE"))
    with pytest.raises(ConmonError) as err:
        await env.create(ctr)
    # runc: "...unable to apply caps: operation not permitted"; crun: "capset: Operation ..."
    assert str(err.value).startswith("runtime create failed: ")
    assert "operation not permitted" in str(err.value).lower()
    assert "level=error" not in str(err.value)
    assert await env.runtime.state(ctr.cid) is None


async def test_attach_path_too_long_is_refused(env: Env, tmp_path: Path) -> None:
    long_dir = "/run/" + "d" * (SUN_PATH_MAX - 20)
    conmon = Conmon(
        env.conmon.conmon,
        runtime_path=env.runtime.binary,
        runtime_args=env.runtime.global_args(),
        socket_dir=long_dir,
    )
    with pytest.raises(ConmonError, match="longer than 107 bytes"):
        await conmon.create(
            "c" * 16,
            "n",
            tmp_path,
            str(tmp_path / "log"),
            tty=False,
            stdin=False,
            stdin_once=False,
            exit_dir=tmp_path,
        )
    assert not lexists(long_dir)


async def test_runtime_cli_info(env: Env) -> None:
    version = await env.runtime.version()
    assert version[:1].isdigit()
    features = await env.runtime.features()
    if env.name == "runc":  # runc 1.1 has `features`; crun 1.8 does not
        assert features is not None and "ociVersionMax" in features
    elif env.name == "crun":
        assert features is None
    assert await env.runtime.list() == []
    assert await env.runtime.state("no-such-container") is None
    with pytest.raises(RuntimeCLIError) as err:
        await env.runtime.start("no-such-container")
    # The runtime's own words, without runc's logrus framing.
    assert err.value.returncode == 1 and err.value.stderr
    assert str(err.value).startswith(f"{env.name} start no-such-container failed (exit 1): ")
    assert "level=error" not in str(err.value)


async def test_conmon_joins_cgroup(env: Env) -> None:
    label = f"conmon-{env.token}"
    ctr = env.bundle("cg", SLEEP)
    env.created.append(ctr.cid)
    try:
        await env.conmon.create(
            ctr.cid,
            ctr.cid,
            ctr.bundle,
            str(ctr.log),
            tty=False,
            stdin=False,
            stdin_once=False,
            exit_dir=env.exit_dir,
            cgroup=f"/{CGROUP_PARENT}/{label}",
        )
        conmon_pid = env.conmon.conmon_pid(ctr.bundle)
        # cpuset included: a fresh v1 cpuset takes no tasks until cpus/mems are set.
        for controller in ("memory", "pids", "cpuset", "systemd"):
            procs = (CGROUP_ROOT / controller / CGROUP_PARENT / label / "cgroup.procs").read_text()
            assert str(conmon_pid) in procs.split()
        await env.runtime.delete(ctr.cid, force=True)
        await env.wait_conmon_gone(ctr)
        env.conmon.remove(ctr.cid, env.exit_dir)
    finally:
        await env.runtime.delete(ctr.cid, force=True)
        if env.conmon.conmon_pid(ctr.bundle) is not None:
            await env.wait_conmon_gone(ctr)
        for d in cgroup_dirs(label):
            d.rmdir()
