"""Crash points for the kill-at-any-point test: the server kills itself with SIGKILL at a
named point inside one RPC call, as a power cut or the OOM killer would stop it there.

Inert unless the environment variable ``CRI_ASYNC_TEST_CRASH_FILE`` names a file when the
server starts (read once, at import); every call below then returns at once. Set, the file
is read as each RPC call begins: if it holds ``<RPC>:<point>[#<n>]`` for that RPC (e.g.
``RunPodSandbox:exec bridge#1``), that call is armed, and the process kills itself the
``n``-th time (default: the first) the call reaches ``point``, counting the tasks and
threads it starts. The test writes the file just before the call it wants stopped and
empties it before it starts the server again. While the variable is set, every point a
call reaches is logged, so a test can list where it may crash.

Points: ``exec <program>`` (a helper program is about to start: an OCI runtime, conmon, a
CNI plugin), ``exited <program>`` (it ran to completion, its answer not yet used),
``commit`` and ``committed`` (before and after a state database transaction), ``blob`` (a
download was committed to the content store), ``snapshot`` (an unpacked layer was renamed
into place).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

ENV = "CRI_ASYNC_TEST_CRASH_FILE"

log = logging.getLogger("cri_async.faults")


@dataclass(frozen=True, slots=True)
class CrashAt:
    rpc: str
    point: str
    nth: int = 1


def parse(spec: str) -> CrashAt | None:
    """``RPC:point[#n]`` -> CrashAt; blank -> None; ValueError if malformed."""
    spec = spec.strip()
    if not spec:
        return None
    rpc, sep, rest = spec.partition(":")
    point, _, nth = rest.rpartition("#") if "#" in rest else (rest, "", "1")
    if not sep or not rpc or not point or not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"crash point {spec!r}: expected <RPC>:<point>[#<n>], n >= 1")
    return CrashAt(rpc, point, int(nth))


@dataclass(slots=True)
class _Call:
    rpc: str
    crash_at: CrashAt | None
    seen: Counter[str] = field(default_factory=Counter)


_FILE = os.environ.get(ENV) or None
_call: ContextVar[_Call | None] = ContextVar("cri_async_faults_call", default=None)


def _armed_for(rpc: str) -> CrashAt | None:
    assert _FILE is not None
    try:
        at = parse(Path(_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.error("%s: %s", _FILE, e)
        return None
    return at if at is not None and at.rpc == rpc else None


@contextlib.contextmanager
def serving(rpc: str) -> Iterator[None]:
    """The body is one call of ``rpc``: the points it reaches count for this call."""
    if _FILE is None:
        yield
        return
    token = _call.set(_Call(rpc, _armed_for(rpc)))
    try:
        yield
    finally:
        _call.reset(token)


def reached(point: str) -> None:
    """Crash here if this is the armed point of the armed call (see the module doc)."""
    if _FILE is None:
        return
    call = _call.get()
    if call is None:
        return
    call.seen[point] += 1
    n = call.seen[point]
    log.warning("crash point %s:%s#%d", call.rpc, point, n)
    if call.crash_at is not None and (point, n) == (call.crash_at.point, call.crash_at.nth):
        logging.shutdown()  # flush the log: the test reads where it stopped
        os.kill(os.getpid(), signal.SIGKILL)
