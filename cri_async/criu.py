"""Whether CRIU can checkpoint on this host (CheckpointContainer/CheckpointPod need it)."""

from __future__ import annotations

import asyncio
import shutil

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
    proc = await asyncio.create_subprocess_exec(
        criu, "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        _cached = "`criu check` did not finish within 30 s"
        return _cached
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    if proc.returncode != 0:
        _cached = f"`criu check` fails on this host: {lines[-1] if lines else 'no output'}"
    else:
        _cached = "CRIU works here, but cri-async does not implement checkpointing yet"
    return _cached
