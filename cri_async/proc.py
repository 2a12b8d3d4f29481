"""Helper programs: the one place that spawns them, bounds them by a deadline, kills them
on timeout or cancellation, and collects their output.

Every OCI runtime, CNI plugin, iptables and conmon call goes through here, so a call that
is cancelled (kubelet gave up) or runs past its deadline never leaves its process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from cri_async import faults

__all__ = [
    "CannotRun",
    "Completed",
    "TimedOut",
    "descendants",
    "kill_tree",
    "run",
    "started",
]

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes

    def text(self) -> str:
        """stderr (else stdout) as text: what a failing tool said."""
        return (self.stderr or self.stdout).decode(errors="replace")


class CannotRun(OSError):
    """The program could not be started (missing, not executable)."""


class TimedOut(TimeoutError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        name = os.path.basename(argv[0]) if argv else "program"
        super().__init__(f"{name} did not finish within {timeout:g}s and was killed")


@contextlib.asynccontextmanager
async def started(
    argv: Sequence[str],
    *,
    stdin: int | None = DEVNULL,
    stdout: int | None = PIPE,
    stderr: int | None = PIPE,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A started process for the body of the ``async with``; if the body raises (a timeout,
    a cancellation) the process (its whole session with ``new_session``) is killed and
    reaped before the exception goes on."""
    faults.reached(f"exec {os.path.basename(argv[0])}")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=new_session,
        )
    except OSError as e:
        raise CannotRun(e.errno, f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        yield proc
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if new_session:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
        raise


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    output: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    new_session: bool = False,
) -> Completed:
    """Run ``argv`` to completion within ``timeout`` seconds.

    ``input`` is written to its stdin (else /dev/null). Its stdout and stderr are collected,
    or both go to the file descriptor ``output`` (for programs whose children inherit them:
    a pipe would stay open as long as they live). Raises CannotRun, or TimedOut after
    killing it.
    """
    out = PIPE if output is None else output
    async with started(
        argv,
        stdin=PIPE if input is not None else DEVNULL,
        stdout=out,
        stderr=out,
        env=env,
        cwd=cwd,
        new_session=new_session,
    ) as proc:
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await proc.communicate(input)
        except TimeoutError:
            raise TimedOut(argv, timeout) from None
    assert proc.returncode is not None
    faults.reached(f"exited {os.path.basename(argv[0])}")
    return Completed(proc.returncode, stdout or b"", stderr or b"")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, parents before children (via /proc children)."""
    found = [root]
    i = 0
    while i < len(found):
        pid = found[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    found.extend(int(p) for p in f.read().split())
            except OSError:
                continue
    return found


def kill_tree(pid: int | None) -> None:
    """SIGKILL ``pid`` and its descendants; they are stopped first so none can fork away."""
    if pid is None:
        return
    stopped: set[int] = set()
    for _ in range(100):
        new = [p for p in descendants(pid) if p not in stopped]
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        stopped.update(new)
    for p in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
