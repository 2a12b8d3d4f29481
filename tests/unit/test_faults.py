"""The test-only crash points: the spec, inert without the variable, and a real SIGKILL at
exactly the armed point of the armed call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cri_async import faults
from cri_async.faults import CrashAt


def test_spec() -> None:
    assert faults.parse("") is None
    assert faults.parse("  \n") is None
    assert faults.parse("RunPodSandbox:exec bridge") == CrashAt("RunPodSandbox", "exec bridge", 1)
    assert faults.parse("StopContainer:exited runc#2\n") == CrashAt(
        "StopContainer", "exited runc", 2
    )
    for bad in ("RunPodSandbox", ":commit", "RunPodSandbox:", "X:commit#0", "X:commit#two"):
        with pytest.raises(ValueError, match="expected <RPC>:<point>"):
            faults.parse(bad)


SCRIPT = """
from cri_async import faults
for rpc in ("Other", "Target", "Target"):
    with faults.serving(rpc):
        for point in ("commit", "exec runc", "commit"):
            faults.reached(point)
print("survived")
"""


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != faults.ENV}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_inert_without_the_variable() -> None:
    assert faults.reached("commit") is None  # this process has no variable set
    done = run({})
    assert (done.returncode, done.stdout, done.stderr) == (0, "survived\n", "")


def test_kills_at_the_armed_point_of_the_first_armed_call(tmp_path: Path) -> None:
    spec = tmp_path / "crash-at"
    spec.write_text("Target:commit#2")
    done = run({faults.ENV: str(spec)})
    assert done.returncode == -signal.SIGKILL
    points = [
        ln.split("crash point ", 1)[1] for ln in done.stderr.splitlines() if "crash point" in ln
    ]
    # Points of other calls are counted for them; the armed call stops at its second commit.
    assert points == [
        "Other:commit#1",
        "Other:exec runc#1",
        "Other:commit#2",
        "Target:commit#1",
        "Target:exec runc#1",
        "Target:commit#2",
    ]


def test_an_emptied_file_disarms(tmp_path: Path) -> None:
    spec = tmp_path / "crash-at"
    spec.write_text("")
    assert run({faults.ENV: str(spec)}).stdout == "survived\n"
    spec.write_text("Target:exec runc#2")  # each call counts its own points: never twice
    assert run({faults.ENV: str(spec)}).stdout == "survived\n"
