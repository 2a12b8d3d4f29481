"""Profiles of a server process while a benchmark phase runs: ``py-spy record`` as
collapsed stacks, and a summary of the hottest frames (inclusive and self).

py-spy comes from PyPI (``pip install py-spy``; the ``bench`` extra of pyproject.toml has
it). ``--nonblocking`` samples without stopping the process, so the profiled timings stay
close to unprofiled ones; the sampler's own CPU is on another core's account.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


def find_py_spy(explicit: str | None = None) -> str | None:
    """``explicit``, else py-spy on PATH, else beside this interpreter (a venv's bin/)."""
    if explicit:
        return explicit
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@contextlib.contextmanager
def py_spy(
    binary: str | None, pid: int, out: Path | None, *, idle: bool, rate: int
) -> Iterator[None]:
    """``py-spy record`` on the server while the body runs (no-op without ``out``)."""
    if binary is None or out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"]
    argv += ["--format", "raw", "--output", str(out)]
    if idle:
        argv.append("--idle")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # let it attach before the phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')}", file=sys.stderr)


LINENO = re.compile(r":\d+\)$")
# Frames worth a line in the inclusive view: ours, the gRPC stack, and the stdlib parts
# (process spawning, worker threads, SQLite) that our code calls into.
OUR_FRAMES = re.compile(
    r"\((cri_async/(?!cli\.py)|grpclib/|h2/)|subprocess|to_thread|add_child_handler|sqlite"
)


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """The hottest functions of a collapsed-stack file: share of samples where each is on
    the stack (inclusive) and where it is the innermost frame (self)."""
    total = 0
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [LINENO.sub(")", fr) for fr in stack.split(";")]
        total += count
        self_[frames[-1]] += count
        for fr in set(frames):
            incl[fr] += count
    if not total:
        return ["(no samples)"]
    ours = Counter({fr: c for fr, c in incl.items() if OUR_FRAMES.search(fr)})
    out = [f"{total} samples"]
    out.append("  inclusive, cri_async / grpclib / subprocess / thread frames:")
    out += [f"    {c / total:6.1%}  {fr}" for fr, c in ours.most_common(top)]
    out.append("  self (innermost frame):")
    out += [f"    {c / total:6.1%}  {fr}" for fr, c in self_.most_common(top)]
    return out
