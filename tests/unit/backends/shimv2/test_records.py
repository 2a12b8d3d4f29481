"""Task API answers as records; Any helpers with containerd's type URLs; cgroup metrics."""

from __future__ import annotations

import json

import pytest
from google.protobuf import any_pb2

from cri_async.api.containerd.cgroups.v1 import metrics_pb2 as v1
from cri_async.api.containerd.cgroups.v2 import metrics_pb2 as v2
from cri_async.api.containerd.runc.options import oci_pb2
from cri_async.api.containerd.runtimeoptions.v1 import api_pb2 as runtimeoptions_pb2
from cri_async.api.containerd.task.v2 import shim_pb2
from cri_async.api.containerd.types.task import task_pb2
from cri_async.backends.shimv2.metrics import UnsupportedMetrics, cgroup_stats
from cri_async.backends.shimv2.records import (
    ExitInfo,
    ProcessInfo,
    Stdio,
    TaskStatus,
    exit_info,
    json_any,
    process_infos,
    runc_options,
    runtime_options,
    task_state,
    timestamp_ns,
)
from cri_async.core.stats import IoDeviceStats, Psi, PsiData

MiB = 1 << 20


def _ts(seconds: int, nanos: int = 0) -> shim_pb2.WaitResponse:
    w = shim_pb2.WaitResponse(exit_status=1)
    w.exited_at.seconds, w.exited_at.nanos = seconds, nanos
    return w


def test_timestamps_go_zero_and_unset_mean_none() -> None:
    assert timestamp_ns(_ts(-62135596800).exited_at) is None  # Go's zero time.Time
    assert timestamp_ns(shim_pb2.WaitResponse().exited_at) is None
    assert timestamp_ns(_ts(1_700_000_000, 5).exited_at) == 1_700_000_000_000_000_005


def test_exit_info_from_wait_and_delete() -> None:
    assert exit_info(_ts(10, 1), pid=7) == ExitInfo(7, 1, 10_000_000_001)
    d = shim_pb2.DeleteResponse(pid=9, exit_status=143)
    assert exit_info(d) == ExitInfo(9, 143, None)


def test_task_state_maps_status_and_stdio() -> None:
    msg = shim_pb2.StateResponse(
        id="c", exec_id="x", bundle="/b", pid=3, status=task_pb2.PAUSED, stdin="/i",
        stdout="/o", terminal=True, exit_status=0,
    )  # fmt: skip
    st = task_state(msg)
    assert (st.status, st.stdio, st.exited_at_ns) == (
        TaskStatus.PAUSED,
        Stdio("/i", "/o", "", True),
        None,
    )
    msg.status = 42  # a status this client does not know
    assert task_state(msg).status is TaskStatus.UNKNOWN


def test_process_infos_name_exec_ids_from_runc_details() -> None:
    details = oci_pb2.ProcessDetails(exec_id="x1").SerializeToString()
    resp = shim_pb2.PidsResponse(
        processes=[
            task_pb2.ProcessInfo(pid=1),
            task_pb2.ProcessInfo(
                pid=2, info=any_pb2.Any(type_url="containerd.runc.v1.ProcessDetails", value=details)
            ),
            task_pb2.ProcessInfo(pid=3, info=any_pb2.Any(type_url="other.Info", value=b"?")),
        ]
    )
    assert process_infos(resp) == (ProcessInfo(1), ProcessInfo(2, "x1"), ProcessInfo(3))


def test_any_helpers_use_containerd_type_urls() -> None:
    opts = runc_options(root="/run/x", binary_name="crun", systemd_cgroup=True)
    assert opts.type_url == "containerd.runc.v1.Options"
    decoded = oci_pb2.Options.FromString(opts.value)
    assert (decoded.root, decoded.binary_name, decoded.systemd_cgroup) == ("/run/x", "crun", True)
    kata = runtime_options(config_path="/opt/kata/configuration.toml")
    assert kata.type_url == "runtimeoptions.v1.Options"
    assert runtimeoptions_pb2.Options.FromString(kata.value).config_path == (
        "/opt/kata/configuration.toml"
    )
    spec = json_any("types.containerd.io/opencontainers/runtime-spec/1/Process", {"args": ["sh"]})
    assert json.loads(spec.value) == {"args": ["sh"]}


def _v1() -> v1.Metrics:
    m = v1.Metrics()
    m.cpu.usage.total, m.cpu.usage.user, m.cpu.usage.kernel = 5_000, 3_000, 2_000
    m.cpu.throttling.periods, m.cpu.throttling.throttled_periods = 10, 2
    m.cpu.throttling.throttled_time = 777
    m.memory.usage.usage, m.memory.usage.limit = 40 * MiB, 64 * MiB
    m.memory.swap.usage, m.memory.swap.limit = 41 * MiB, 128 * MiB
    m.memory.total_inactive_file, m.memory.total_rss = 10 * MiB, 20 * MiB
    m.memory.total_cache, m.memory.total_mapped_file = 15 * MiB, 1 * MiB
    m.memory.total_pg_fault, m.memory.total_pg_maj_fault = 100, 3
    m.memory_oom_control.oom_kill = 1
    m.pids.current, m.pids.limit = 4, 0
    for op, dev, value, kind in [
        ("Read", (8, 0), 4096, "bytes"),
        ("Write", (8, 0), 8192, "bytes"),
        ("Total", (8, 0), 12288, "bytes"),
        ("Read", (8, 0), 1, "ops"),
        ("Write", (8, 0), 2, "ops"),
        ("Read", (7, 1), 512, "bytes"),
    ]:
        field = (
            m.blkio.io_service_bytes_recursive if kind == "bytes" else m.blkio.io_serviced_recursive
        )
        field.add(op=op, major=dev[0], minor=dev[1], value=value)
    return m


def _pack(m: v1.Metrics | v2.Metrics, url: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=url, value=m.SerializeToString())


def test_v1_metrics_become_cgroup_stats() -> None:
    s = cgroup_stats(_pack(_v1(), "io.containerd.cgroups.v1.Metrics"))
    assert s.version == 1
    assert (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns) == (5_000, 3_000, 2_000)
    assert (s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns) == (10, 2, 777)
    assert (s.memory_usage, s.memory_limit, s.memory_working_set) == (40 * MiB, 64 * MiB, 30 * MiB)
    assert (s.memory_rss, s.memory_cache, s.memory_mapped_file) == (20 * MiB, 15 * MiB, MiB)
    assert (s.swap_usage, s.swap_limit) == (MiB, 64 * MiB)  # memsw minus memory
    assert (s.pgfault, s.pgmajfault, s.oom_kills) == (100, 3, 1)
    assert (s.pids_current, s.pids_max) == (4, None)  # 0 is "max"
    assert s.io == (IoDeviceStats(7, 1, 512, 0, 0, 0), IoDeviceStats(8, 0, 4096, 8192, 1, 2))


def test_v1_unlimited_and_missing_parts() -> None:
    m = v1.Metrics()
    m.memory.usage.usage, m.memory.usage.limit = MiB, 9223372036854771712  # v1 "unlimited"
    s = cgroup_stats(_pack(m, "io.containerd.cgroups.v1.Metrics"))
    assert (s.memory_limit, s.swap_usage, s.swap_limit) == (None, None, None)
    assert (s.cpu_usage_ns, s.pids_current, s.oom_kills, s.io) == (None, None, None, ())
    empty = cgroup_stats(_pack(v1.Metrics(), "io.containerd.cgroups.v1.Metrics"))
    assert (empty.memory_usage, empty.memory_working_set, empty.memory_rss) == (None, None, None)


def test_v2_metrics_become_cgroup_stats() -> None:
    m = v2.Metrics()
    m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec = 5, 3, 2
    m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec = 9, 1, 4
    m.cpu.psi.some.avg10, m.cpu.psi.some.total = 1.5, 20
    m.memory.usage, m.memory.usage_limit = 40 * MiB, 2**64 - 1  # "max"
    m.memory.inactive_file, m.memory.anon, m.memory.file = 50 * MiB, 20 * MiB, 15 * MiB
    m.memory.file_mapped, m.memory.shmem = MiB, 2 * MiB
    m.memory.pgfault, m.memory.pgmajfault = 10, 1
    m.memory.swap_usage, m.memory.swap_limit = 0, 2**64 - 1
    m.memory_events.oom_kill = 2
    m.pids.current, m.pids.limit = 3, 100
    m.io.usage.add(major=8, minor=0, rbytes=1, wbytes=2, rios=3, wios=4)
    s = cgroup_stats(_pack(m, "type.googleapis.com/io.containerd.cgroups.v2.Metrics"))
    assert s.version == 2
    assert (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns, s.cpu_throttled_ns) == (
        5_000, 3_000, 2_000, 4_000
    )  # fmt: skip
    assert (s.memory_usage, s.memory_limit, s.memory_working_set) == (40 * MiB, None, 0)
    assert (s.memory_rss, s.memory_cache, s.memory_shmem) == (20 * MiB, 15 * MiB, 2 * MiB)
    assert (s.swap_usage, s.swap_limit, s.oom_kills) == (0, None, 2)
    assert (s.pids_current, s.pids_max) == (3, 100)
    assert s.io == (IoDeviceStats(8, 0, 1, 2, 3, 4),)
    assert s.psi_cpu == Psi(PsiData(1.5, 0.0, 0.0, 20_000))
    assert s.psi_memory is None and s.psi_io is None


def test_other_stats_types_are_refused() -> None:
    with pytest.raises(UnsupportedMetrics, match="not cgroup metrics"):
        cgroup_stats(any_pb2.Any(type_url="io.containerd.hcsshim.v1.Stats", value=b""))
    with pytest.raises(UnsupportedMetrics, match="undecodable"):
        cgroup_stats(any_pb2.Any(type_url="io.containerd.cgroups.v1.Metrics", value=b"\xff\xff"))
