"""``make bench`` still runs: ``bench/suite.py --mode smoke`` once, against cri-async and
containerd, as a process (about 30-60 s).

Nothing here is timed: performance numbers live in ``bench/`` and docs/performance.md. The
test checks what a broken harness would lose: that every section produced samples for both
runtimes (and the floor, and the fake backend), that the memory phase saw one monitor per
pod, that every pod came back after the kill -9, and that nothing was left on the host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prereq import need_binary, need_file, need_root

pytestmark = [pytest.mark.root, pytest.mark.registry, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
BOTH = ("cri-async", "containerd")
SECTIONS = (
    "version",
    "list_pods@0",
    "list_containers@5",
    "lifecycle.run_pod",
    "lifecycle.total",
    "scratch",
    "concurrent.up_wall",
    "exec.idle",
    "load.exec",
    "load.list_pods",
    "load.container_stats",
    "load.cpu",
    "load.cpu_stack",
    "pull.a.wall",
    "pull.b.wall",
    "mem.idle.rss",
    "mem.pods.monitors_rss",
    "restart.ready",
    "restart.listed",
)


def test_bench_suite_runs_and_leaves_nothing(tmp_path: Path) -> None:
    need_root("the suite runs real containers under both runtimes")
    for name in ("containerd", "containerd-shim-runc-v2", "runc", "conmon", "docker-registry"):
        need_binary(name, "make test-deps", sbin=True)
    for name in ("iptables", "ip"):
        need_binary(name, "make run-deps", sbin=True)
    need_file("/usr/bin/catatonit", "apt-get install catatonit (the pause image)")
    need_file("/bin/busybox", "apt-get install busybox-static")
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "bench/suite.py", "--mode", "smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    doc = json.loads(out.read_text())
    assert doc["failed"] is None
    assert doc["problems"] == [], doc["problems"]
    samples = doc["samples"]
    for metric in SECTIONS:
        for rt in BOTH:
            assert samples.get(metric, {}).get(rt), f"no {metric} samples for {rt}"
    assert samples["lifecycle.total"]["floor"] and samples["concurrent.up_wall"]["floor"]
    assert samples["list_containers@50"]["cri-async (fake)"]
    pods = doc["mode"]["pods"]
    # One conmon per container (one container per pod) / one shim per pod.
    assert samples["mem.pods.monitors"] == {rt: [float(pods)] for rt in BOTH}
    assert "| cri-async | containerd | ratio |" in "\n".join(doc["markdown"])
    assert "LEFT BEHIND" not in proc.stdout
