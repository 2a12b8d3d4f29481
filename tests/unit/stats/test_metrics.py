"""cAdvisor-compatible metric descriptors and values from samples."""

from __future__ import annotations

from cri_async.core.metrics import (
    BASE_LABEL_KEYS,
    ContainerInfo,
    Metric,
    MetricType,
    PodInfo,
    container_metrics,
    metric_descriptors,
    pod_sandbox_metrics,
)
from cri_async.core.stats import (
    ContainerSample,
    FilesystemStats,
    IoDeviceStats,
    NetworkStats,
    PodSample,
    ProcessStats,
)
from cri_async.stats.cgroupstats import stats_from_v2
from cri_async.stats.network import parse_netdev
from cri_async.stats.samples import cpu_stats, io_stats, memory_stats, process_stats, swap_stats

from .support import FIXTURES, fixture_files

TS = 1_700_000_000_123_456_789
POD = PodInfo(name="web-0", namespace="shop")
APP = ContainerInfo(name="app", image="registry.example/app:1.2")
CGROUP = "/kubepods/burstable/pod1234/c1"


def _sample() -> ContainerSample:
    r = stats_from_v2(fixture_files("v2"))
    return ContainerSample(
        container_id="c1",
        sandbox_id="s1",
        cgroups_path=CGROUP,
        timestamp=TS,
        cpu=cpu_stats(r, TS, 250_000_000),
        memory=memory_stats(r, TS),
        swap=swap_stats(r, TS),
        io=io_stats(r, TS),
        process=process_stats(r, TS),
        writable_layer=FilesystemStats(TS, "/var/lib/cri-async", 81920, 12),
    )


def _by_name(metrics: tuple[Metric, ...]) -> dict[str, list[Metric]]:
    out: dict[str, list[Metric]] = {}
    for m in metrics:
        out.setdefault(m.name, []).append(m)
    return out


def test_descriptors() -> None:
    descs = metric_descriptors()
    names = [d.name for d in descs]
    assert len(names) == len(set(names))
    for d in descs:
        assert d.label_keys[: len(BASE_LABEL_KEYS)] == BASE_LABEL_KEYS
        assert d.name.startswith("container_") and d.help
        assert (d.metric_type is MetricType.COUNTER) == d.name.endswith("_total"), d.name
    by = {d.name: d for d in descs}
    for name in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_usage_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_fs_usage_bytes",
        "container_spec_memory_limit_bytes",
        "container_processes",
        "container_oom_events_total",
        "container_cpu_cfs_throttled_periods_total",
    ):
        assert name in by, name
    assert by["container_cpu_usage_seconds_total"].label_keys[-1] == "cpu"
    assert by["container_network_receive_bytes_total"].label_keys[-1] == "interface"
    assert by["container_memory_failures_total"].label_keys[-2:] == ("failure_type", "scope")
    assert by["container_memory_working_set_bytes"].metric_type is MetricType.GAUGE
    assert int(MetricType.COUNTER) == 0 and int(MetricType.GAUGE) == 1  # CRI's numbers


def test_container_metric_values() -> None:
    cm = container_metrics(_sample(), APP, POD)
    assert cm.container_id == "c1"
    base = ("app", CGROUP, "registry.example/app:1.2", "c1", "shop", "web-0")
    descs = {d.name: d for d in metric_descriptors()}
    for m in cm.metrics:
        assert m.timestamp == TS
        assert m.label_values[:6] == base
        assert len(m.label_values) == len(descs[m.name].label_keys)
        assert m.metric_type is descs[m.name].metric_type

    def value(name: str, *extra: str) -> int:
        [m] = [m for m in cm.metrics if m.name == name and m.label_values[6:] == extra]
        return m.value

    assert value("container_cpu_usage_seconds_total", "total") == 8  # 8.370126 s, floored
    assert value("container_cpu_user_seconds_total") == 6
    assert value("container_cpu_system_seconds_total") == 2
    assert value("container_cpu_cfs_periods_total") == 1520
    assert value("container_cpu_cfs_throttled_periods_total") == 37
    assert value("container_cpu_cfs_throttled_seconds_total") == 0
    assert value("container_memory_usage_bytes") == 52_953_088
    assert value("container_memory_working_set_bytes") == 52_953_088 - 12_406_784
    assert value("container_memory_rss") == 31_899_648
    assert value("container_memory_cache") == 18_579_456
    assert value("container_memory_mapped_file") == 10_407_936
    assert value("container_memory_swap") == 1_048_576
    assert value("container_memory_failures_total", "pgfault", "container") == 41_233
    assert value("container_memory_failures_total", "pgmajfault", "hierarchy") == 118
    assert value("container_oom_events_total") == 1
    assert value("container_spec_memory_limit_bytes") == 134_217_728
    assert value("container_processes") == 7
    assert value("container_threads_max") == 0  # pids.max "max"
    assert value("container_fs_usage_bytes") == 81920
    assert value("container_fs_writes_bytes_total", "254:0") == 314_773_504
    assert value("container_fs_reads_total", "253:0") == 1
    assert value("container_pressure_cpu_waiting_seconds_total") == 4  # 4117531 us
    assert value("container_pressure_cpu_stalled_seconds_total") == 1
    assert value("container_pressure_io_waiting_seconds_total") == 0
    # Network series belong to the pod, not to a container.
    assert not [m for m in cm.metrics if m.name.startswith("container_network_")]


def test_named_devices_and_missing_sections() -> None:
    s = _sample()
    io = s.io
    assert io is not None
    named = ContainerSample(
        container_id="c1",
        sandbox_id="s1",
        cgroups_path=CGROUP,
        timestamp=TS,
        io=type(io)(TS, (IoDeviceStats(254, 0, 1, 2, 3, 4, name="/dev/vda"),)),
    )
    by = _by_name(container_metrics(named, APP, POD).metrics)
    assert by["container_fs_reads_bytes_total"][0].label_values[-1] == "/dev/vda"
    assert set(by) == {
        "container_fs_reads_bytes_total",
        "container_fs_writes_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_total",
    }
    empty = ContainerSample("c2", "s1", CGROUP, TS)
    assert container_metrics(empty, APP, POD).metrics == ()


def test_pod_sandbox_metrics() -> None:
    net = NetworkStats(TS, parse_netdev((FIXTURES / "netdev-host").read_text()))
    other = ContainerSample("c9", "s1", CGROUP + "9", TS, process=ProcessStats(TS, 2))
    pod = PodSample(
        sandbox_id="s1",
        cgroup_parent="/kubepods/burstable/pod1234",
        timestamp=TS,
        network=net,
        containers=(_sample(), other),
    )
    pm = pod_sandbox_metrics(pod, POD, {"c1": APP})
    assert pm.pod_sandbox_id == "s1"
    base = ("", "/kubepods/burstable/pod1234", "", "", "shop", "web-0")
    assert all(m.label_values[:6] == base for m in pm.metrics)
    by = _by_name(pm.metrics)
    rx = {m.label_values[-1]: m.value for m in by["container_network_receive_bytes_total"]}
    assert rx == {"ifb0": 0, "ifb1": 0, "eth0": 799_925_904}  # no loopback
    assert {m.label_values[-1]: m.value for m in by["container_network_transmit_packets_total"]}[
        "eth0"
    ] == 12_725
    assert all(m.metric_type is MetricType.COUNTER for m in pm.metrics)
    assert [c.container_id for c in pm.container_metrics] == ["c1", "c9"]
    assert pm.container_metrics[0] == container_metrics(_sample(), APP, POD)
    # A container without ContainerInfo: empty name and image labels.
    unknown = _by_name(pm.container_metrics[1].metrics)
    assert set(unknown) == {"container_processes", "container_threads_max"}
    [procs] = unknown["container_processes"]
    assert procs.label_values == ("", CGROUP + "9", "", "c9", "shop", "web-0")
    assert procs.value == 2
