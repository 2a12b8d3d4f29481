"""cgroup parsers on real v1 files from the project's VM and hand-written v2 files, the
mountinfo-based layout detection, and the reader adapter over fake hierarchies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cri_async.core.stats import IoDeviceStats, Psi, PsiData
from cri_async.stats.cgrouplayout import (
    CgroupLayout,
    CgroupMounts,
    detect_layout,
    parse_mountinfo,
    relative_cgroup_path,
)
from cri_async.stats.cgroups import CgroupReader
from cri_async.stats.cgroupstats import (
    V1_FILES,
    CgroupStats,
    parse_blkio_v1,
    parse_io_stat,
    parse_keyed,
    parse_limit,
    parse_psi,
    psi_from_files,
    stats_from_v1,
    stats_from_v2,
    working_set,
)

from .support import FIXTURES, fixture_files

V1_EXPECTED = CgroupStats(
    version=1,
    cpu_usage_ns=308_359_594,
    cpu_user_ns=280_000_000,  # 28 USER_HZ ticks
    cpu_system_ns=10_000_000,  # 1 tick
    cpu_periods=0,
    cpu_throttled_periods=0,
    cpu_throttled_ns=0,
    memory_usage=22_274_048,
    memory_limit=268_435_456,
    memory_working_set=22_274_048 - 4_194_304,
    memory_rss=16_850_944,
    memory_cache=5_242_880,
    memory_mapped_file=1_048_576,
    memory_shmem=1_048_576,
    memory_inactive_file=4_194_304,
    pgfault=5399,
    pgmajfault=0,
    swap_usage=0,  # memsw.usage - usage
    swap_limit=None,  # memsw unlimited
    oom_kills=0,
    pids_current=1,
    pids_max=64,
    io=(IoDeviceStats(254, 0, read_bytes=2_097_152, write_bytes=4_202_496, reads=4, writes=5),),
)

V2_PSI_CPU = Psi(
    some=PsiData(1.53, 0.87, 0.23, 4_117_531_000), full=PsiData(0.42, 0.20, 0.05, 1_022_315_000)
)
V2_PSI_MEM = Psi(
    some=PsiData(0.0, 0.12, 0.05, 78_212_000), full=PsiData(0.0, 0.08, 0.02, 51_003_000)
)
V2_PSI_IO = Psi(
    some=PsiData(0.31, 0.10, 0.02, 215_870_000), full=PsiData(0.31, 0.09, 0.02, 206_443_000)
)
V2_EXPECTED = CgroupStats(
    version=2,
    cpu_usage_ns=8_370_126_000,
    cpu_user_ns=6_093_045_000,
    cpu_system_ns=2_277_081_000,
    cpu_periods=1520,
    cpu_throttled_periods=37,
    cpu_throttled_ns=913_442_000,
    memory_usage=52_953_088,
    memory_limit=134_217_728,
    memory_working_set=52_953_088 - 12_406_784,
    memory_rss=31_899_648,  # anon
    memory_cache=18_579_456,  # file
    memory_mapped_file=10_407_936,
    memory_shmem=135_168,
    memory_inactive_file=12_406_784,
    pgfault=41_233,
    pgmajfault=118,
    swap_usage=1_048_576,
    swap_limit=None,
    oom_kills=1,
    pids_current=7,
    pids_max=None,
    io=(
        IoDeviceStats(253, 0, read_bytes=4096, write_bytes=0, reads=1, writes=0),
        IoDeviceStats(254, 0, read_bytes=1_459_200, write_bytes=314_773_504, reads=192, writes=353),
    ),
    psi_cpu=V2_PSI_CPU,
    psi_memory=V2_PSI_MEM,
    psi_io=V2_PSI_IO,
)


# -- pure parsers ---------------------------------------------------------------------------


def test_v1_fixture_exact() -> None:
    assert stats_from_v1(fixture_files("v1")) == V1_EXPECTED


def test_v2_fixture_exact() -> None:
    assert stats_from_v2(fixture_files("v2")) == V2_EXPECTED


def test_v1_user_hz_scales_cpuacct_stat() -> None:
    s = stats_from_v1({"cpuacct.stat": "user 28\nsystem 1\n"}, user_hz=1000)
    assert (s.cpu_user_ns, s.cpu_system_ns) == (28_000_000, 1_000_000)


def test_v1_throttling_and_oom() -> None:
    s = stats_from_v1(
        {
            "cpu.stat": "nr_periods 120\nnr_throttled 7\nthrottled_time 35000000\n"
            "nr_bursts 0\nburst_time 0\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        }
    )
    assert (s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns) == (120, 7, 35_000_000)
    assert s.oom_kills == 3
    assert s.memory_usage is None and s.memory_working_set is None


def test_v1_swap_from_memsw_and_swap_limit() -> None:
    s = stats_from_v1(
        {
            "memory.usage_in_bytes": "1000000\n",
            "memory.memsw.usage_in_bytes": "1500000\n",
            "memory.limit_in_bytes": "2000000\n",
            "memory.memsw.limit_in_bytes": "3000000\n",
        }
    )
    assert (s.swap_usage, s.swap_limit) == (500_000, 1_000_000)


def test_v1_without_memsw_uses_memory_stat_swap() -> None:
    s = stats_from_v1({"memory.usage_in_bytes": "10\n", "memory.stat": "swap 4096\n"})
    assert s.swap_usage == 4096
    assert stats_from_v1({"memory.usage_in_bytes": "10\n"}).swap_usage is None


def test_v1_non_hierarchical_memory_stat() -> None:
    # Without total_* lines (a memory.stat of a kernel/config without them) the local ones count.
    s = stats_from_v1(
        {
            "memory.usage_in_bytes": "10000\n",
            "memory.stat": "rss 4000\ninactive_file 3000\npgfault 12\npgmajfault 1\n",
        }
    )
    assert (s.memory_rss, s.memory_inactive_file, s.memory_working_set) == (4000, 3000, 7000)
    assert (s.pgfault, s.pgmajfault) == (12, 1)


def test_v1_plain_blkio_files_when_no_recursive_ones() -> None:
    files = {k: v for k, v in fixture_files("v1").items() if not k.endswith("_recursive")}
    assert stats_from_v1(files).io == V1_EXPECTED.io


def test_working_set_floors_at_zero() -> None:
    assert working_set(100, 300) == 0
    assert working_set(100, None) == 100
    s = stats_from_v2({"memory.current": "4096\n", "memory.stat": "inactive_file 8192\n"})
    assert s.memory_working_set == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),
        ("134217728\n", 134_217_728),
        ("9223372036854771712\n", None),  # v1 "unlimited"
        ("-1\n", None),
        ("0\n", 0),
    ],
)
def test_parse_limit(text: str, expected: int | None) -> None:
    assert parse_limit(text) == expected


def test_parse_keyed_skips_non_integer_lines() -> None:
    assert parse_keyed("a 1\nb x\nc 2 3\n\nd 4\n") == {"a": 1, "d": 4}


def test_parse_psi_without_full_line() -> None:
    # cpu.pressure before Linux 5.13 has only the "some" line.
    assert parse_psi("some avg10=0.50 avg60=0.25 avg300=0.10 total=1234\n") == Psi(
        some=PsiData(0.5, 0.25, 0.1, 1_234_000), full=None
    )


def test_parse_psi_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="no 'some' line"):
        parse_psi("")
    # Unparsable pressure files are dropped, not fatal.
    assert psi_from_files({"cpu.pressure": "garbage"}) == (None, None, None)


def test_hybrid_unified_pressure_fixture() -> None:
    cpu, mem, io = psi_from_files(fixture_files("hybrid-unified"))
    assert cpu == Psi(PsiData(0.0, 0.0, 0.0, 126_027_000), PsiData(0.0, 0.0, 0.0, 126_027_000))
    assert mem == Psi(PsiData(0.0, 0.0, 0.0, 0), PsiData(0.0, 0.0, 0.0, 0))
    assert io == Psi(PsiData(0.0, 0.0, 0.0, 3_451_000), PsiData(0.0, 0.0, 0.0, 3_451_000))


def test_blkio_v1_several_devices() -> None:
    by = "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\n8:16 Read 1\n8:16 Write 2\nTotal 33\n"
    ops = "8:0 Read 3\n8:0 Write 4\n8:16 Read 5\nTotal 12\n"
    assert parse_blkio_v1(by, ops) == (
        IoDeviceStats(8, 0, 10, 20, 3, 4),
        IoDeviceStats(8, 16, 1, 2, 5, 0),
    )
    assert parse_blkio_v1("Total 0\n", "Total 0\n") == ()


def test_io_stat_missing_keys_default_to_zero() -> None:
    assert parse_io_stat("8:0 rbytes=5 rios=1\n\n") == (IoDeviceStats(8, 0, 5, 0, 1, 0),)


# -- layout ---------------------------------------------------------------------------------


def test_mountinfo_of_this_vm_is_hybrid() -> None:
    mounts = parse_mountinfo((FIXTURES / "mountinfo-hybrid").read_text())
    assert dict(mounts.v1) == {
        c: f"/sys/fs/cgroup/{c}"
        for c in (
            "cpu",
            "cpuacct",
            "cpuset",
            "memory",
            "devices",
            "freezer",
            "blkio",
            "pids",
            "hugetlb",
        )
    }
    assert mounts.unified == "/sys/fs/cgroup/unified"
    layout = detect_layout(mounts)
    assert layout.mode == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"


def test_mountinfo_v2() -> None:
    mounts = parse_mountinfo((FIXTURES / "mountinfo-v2").read_text())
    assert mounts == CgroupMounts(v1={}, unified="/sys/fs/cgroup")
    assert detect_layout(mounts) == CgroupLayout(mode="v2", v1={}, unified="/sys/fs/cgroup")


def test_mountinfo_comounted_and_escaped() -> None:
    text = (
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 / /my\\040cgroups/memory rw shared:10 - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "33 25 0:29 / /elsewhere/memory rw - cgroup cgroup rw,memory\n"
    )
    mounts = parse_mountinfo(text)
    assert dict(mounts.v1) == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/my cgroups/memory",  # the first mount wins
    }
    assert detect_layout(mounts).mode == "v1"


def test_no_cgroups_mounted() -> None:
    with pytest.raises(ValueError, match="no cgroup hierarchy"):
        detect_layout(parse_mountinfo("22 28 0:21 / /proc rw - proc proc rw\n"))


@pytest.mark.parametrize(
    ("path", "rel"),
    [
        ("/kubepods/burstable/pod1234/abcd", "kubepods/burstable/pod1234/abcd"),
        ("/cri-async/pod-xxx/cid", "cri-async/pod-xxx/cid"),
        ("relative/./x/", "relative/x"),
        ("/", ""),
    ],
)
def test_relative_cgroup_path(path: str, rel: str) -> None:
    assert relative_cgroup_path(path) == rel


@pytest.mark.parametrize("path", ["/kubepods/../etc", "kubepods.slice:cri-async:abcd"])
def test_relative_cgroup_path_rejects(path: str) -> None:
    with pytest.raises(ValueError, match="cgroups path"):
        relative_cgroup_path(path)


# -- reader over fake hierarchies -----------------------------------------------------------

REL = "kubepods/burstable/pod1234/abcd"


def _v1_tree(root: Path, *, controllers: tuple[str, ...] = tuple(V1_FILES)) -> CgroupLayout:
    src = FIXTURES / "v1"
    for controller in controllers:
        d = root / controller / REL
        d.mkdir(parents=True)
        for name in V1_FILES[controller]:
            if (src / name).exists():
                shutil.copyfile(src / name, d / name)
    u = root / "unified" / REL
    u.mkdir(parents=True)
    for p in (FIXTURES / "hybrid-unified").iterdir():
        shutil.copyfile(p, u / p.name)
    v1 = {c: str(root / c) for c in controllers}
    return CgroupLayout(mode="hybrid", v1=v1, unified=str(root / "unified"))


def _sysfs(root: Path) -> str:
    d = root / "sys" / "dev" / "block" / "254:0"
    d.mkdir(parents=True)
    (d / "uevent").write_text("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
    return str(root / "sys")


def test_reader_hybrid_reads_v1_and_unified_psi(tmp_path: Path) -> None:
    reader = CgroupReader(_v1_tree(tmp_path), sysfs=_sysfs(tmp_path))
    s = reader.read("/" + REL)
    assert s is not None
    cpu, mem, io = psi_from_files(fixture_files("hybrid-unified"))
    named = (IoDeviceStats(254, 0, 2_097_152, 4_202_496, 4, 5, name="/dev/vda"),)
    assert s == CgroupStats(
        **{
            **{f: getattr(V1_EXPECTED, f) for f in V1_EXPECTED.__dataclass_fields__},
            "io": named,
            "psi_cpu": cpu,
            "psi_memory": mem,
            "psi_io": io,
        }
    )
    assert reader.exists("/" + REL)


def test_reader_unknown_device_keeps_numbers(tmp_path: Path) -> None:
    reader = CgroupReader(_v1_tree(tmp_path), sysfs=str(tmp_path / "nosys"))
    s = reader.read(REL)
    assert s is not None and s.io[0].name == "254:0"


def test_reader_missing_cgroup(tmp_path: Path) -> None:
    reader = CgroupReader(_v1_tree(tmp_path))
    assert reader.read("/kubepods/burstable/pod1234/gone") is None
    assert not reader.exists("/kubepods/burstable/pod1234/gone")


def test_reader_hybrid_without_cpuacct_or_pids(tmp_path: Path) -> None:
    layout = _v1_tree(tmp_path, controllers=("memory", "cpu"))
    (tmp_path / "memory" / REL / "tasks").write_text("101\n102\n103\n")
    s = CgroupReader(layout).read(REL)
    assert s is not None
    # CPU usage from the cgroup2 group's cpu.stat (usage_usec 308359 in the fixture)...
    assert (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns) == (
        308_359_000,
        289_085_000,
        19_274_000,
    )
    # ...and the task count from the tasks file.
    assert s.pids_current == 3 and s.pids_max is None


def test_reader_v2(tmp_path: Path) -> None:
    d = tmp_path / "cg" / REL
    d.mkdir(parents=True)
    for p in (FIXTURES / "v2").iterdir():
        shutil.copyfile(p, d / p.name)
    layout = CgroupLayout(mode="v2", v1={}, unified=str(tmp_path / "cg"))
    reader = CgroupReader(layout, sysfs=_sysfs(tmp_path))
    s = reader.read("/" + REL)
    assert s is not None
    assert s.io == (
        IoDeviceStats(253, 0, 4096, 0, 1, 0, name="253:0"),
        IoDeviceStats(254, 0, 1_459_200, 314_773_504, 192, 353, name="/dev/vda"),
    )
    assert s.memory_working_set == V2_EXPECTED.memory_working_set
    assert s.psi_cpu == V2_PSI_CPU
    assert reader.read("/" + REL + "-gone") is None
    assert reader.exists(REL) and not reader.exists(REL + "-gone")


def test_detect_on_this_machine() -> None:
    # Whatever the layout, detection must succeed and the root group must be readable.
    reader = CgroupReader.detect()
    s = reader.read("/")
    assert s is not None
    assert s.cpu_usage_ns is not None and s.cpu_usage_ns > 0
