"""Running one exec-sync through conmon (``-e --sync``) and collecting its result.

conmon stays our child and ends with ``{"exit_code": N}`` on the sync pipe, or
``{"exit_code": -1, "message": ...}`` when the runtime failed or its ``-T`` fired ("command
timed out"). The output is a CRI-format log file, parsed here with each stream capped.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_async import files, proc
from cri_async.logs.crilog import OutputCapture, ParseError, Stream
from cri_async.logs.crilog import parse_line as parse_log_line
from cri_async.monitor import syncpipe
from cri_async.oci.errors import runtime_message

BACKSTOP = 5
"""Seconds after our own exec timeout that conmon's ``-T`` fires, should ours not work."""


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    exit_code: int
    """-1 when it timed out (conmon then reports our kill; CRI callers look at timed_out)."""
    stdout: bytes
    stderr: bytes
    timed_out: bool


class ExecFailed(Exception):
    """The exec could not run (the runtime refused it, conmon failed)."""


@dataclass(frozen=True, slots=True)
class CallFiles:
    """One exec's files, in a directory of its own (concurrent execs share a parent)."""

    dir: Path

    @property
    def spec(self) -> Path:
        return self.dir / "process.json"

    @property
    def log(self) -> Path:
        return self.dir / "exec.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "exec.pid"


def prepare(workdir: Path, process: dict[str, Any]) -> CallFiles:
    """A fresh directory for one exec below ``workdir``, holding its ``process.json``."""
    workdir.mkdir(parents=True, exist_ok=True)
    call = CallFiles(Path(tempfile.mkdtemp(prefix="exec-", dir=workdir)))
    call.spec.write_text(json.dumps(process))
    return call


def read_output(path: Path, limit: int) -> tuple[bytes, bytes]:
    """stdout and stderr of an exec-sync log, each capped at ``limit`` bytes (in a thread)."""
    capture = OutputCapture(limit)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return b"", b""
    with f:
        for line in f:
            try:
                capture.add_record(parse_log_line(line))
            except ParseError:
                continue  # conmon only writes valid records; a torn last line is skipped
    return capture.output(Stream.STDOUT), capture.output(Stream.STDERR)


async def collect(
    argv: Sequence[str], call: CallFiles, cid: str, deadline: float | None, limit: int
) -> ExecOutcome:
    """Run conmon (``argv``) for one exec and wait for its result.

    On our deadline the exec'd process and all its descendants are stopped and killed here:
    conmon's ``-T`` only kills the process group, which a ``setsid`` child leaves. If this
    call is cancelled, nothing of the exec outlives it.
    """
    timed_out = False
    try:
        async with syncpipe.spawn(argv, cwd=call.dir) as session:
            session.go()
            # A task, so that the bytes read so far survive the timeout.
            read = asyncio.ensure_future(session.reader.read())
            try:
                try:
                    data = await asyncio.wait_for(asyncio.shield(read), deadline)
                except TimeoutError:
                    timed_out = True
                    # Again until conmon reports: the runtime may not have written the pid yet.
                    while not read.done():
                        proc.kill_tree(files.read_pid(call.pidfile))
                        await asyncio.wait([read], timeout=0.5)
                    data = await read
            finally:
                if not read.done():
                    read.cancel()
            rc = await session.process.wait()
            diagnostics = session.diagnostics_tail()
    except BaseException:
        proc.kill_tree(files.read_pid(call.pidfile))
        raise
    msgs = [m for m in syncpipe.parse(data) if "exit_code" in m]
    if not msgs:
        raise ExecFailed(f"conmon exec exited {rc} without a result: {diagnostics}")
    result = msgs[-1]
    raw = result.get("exit_code")
    message = str(result.get("message") or "")
    if not isinstance(raw, int) or raw < 0:
        if "timed out" not in message:
            raise ExecFailed(f"exec in {cid} failed: {runtime_message(message) or result}")
        timed_out = True
    code = raw if isinstance(raw, int) and not timed_out else -1
    stdout, stderr = await asyncio.to_thread(read_output, call.log, limit)
    return ExecOutcome(code, stdout, stderr, timed_out)
