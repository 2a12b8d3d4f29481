"""Whether CRIU can checkpoint on this host (CheckpointContainer/CheckpointPod need it)."""

from __future__ import annotations

import shutil

from cri_async import proc

_cached: str | None = None


async def unsupported_reason() -> str:
    """Why checkpointing cannot work here, from ``criu check`` (run once, cached)."""
    global _cached
    if _cached is not None:
        return _cached
    criu = shutil.which("criu")
    if criu is None:
        _cached = "CRIU is not installed"
        return _cached
    try:
        done = await proc.run([criu, "check"], timeout=30)
    except proc.TimedOut:
        _cached = "`criu check` did not finish within 30 s"
        return _cached
    out = done.stdout + done.stderr
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    if done.returncode != 0:
        _cached = f"`criu check` fails on this host: {lines[-1] if lines else 'no output'}"
    else:
        _cached = "CRIU works here, but cri-async does not implement checkpointing yet"
    return _cached
