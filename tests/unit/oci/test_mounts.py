"""Mounts: defaults, pod files, CRI mounts, replacement, propagation, ordering."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.core.model import IDMapping, ImageSpec, Mount, NamespaceMode, Propagation
from cri_async.core.model import UserNamespace as UserNS
from cri_async.oci import SpecError
from cri_async.oci.mounts import build_mounts, clean, depth

from .builders import HOST, HOST_NET_POD, POD, build, container, mount_at, ns, sandbox

DEFAULT_DESTINATIONS = [
    "/proc",
    "/dev",
    "/sys",
    "/dev/pts",
    "/dev/mqueue",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/dev/shm",  # the pod's, replacing the default tmpfs
    "/sys/fs/cgroup",
]


def destinations(spec: dict[str, object]) -> list[str]:
    mounts = spec["mounts"]
    assert isinstance(mounts, list)
    return [m["destination"] for m in mounts]


def test_default_mounts_and_pod_files() -> None:
    spec = build()
    assert destinations(spec) == DEFAULT_DESTINATIONS
    assert "/run" not in destinations(spec)
    assert mount_at(spec, "/proc") == {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    }
    assert "ro" in mount_at(spec, "/sys")["options"]
    assert "ro" in mount_at(spec, "/sys/fs/cgroup")["options"]
    assert mount_at(spec, "/dev/mqueue")["type"] == "mqueue"


def test_pod_files_are_rbind_private_and_writable() -> None:
    spec = build()
    assert mount_at(spec, "/etc/hosts") == {
        "destination": "/etc/hosts",
        "type": "bind",
        "source": POD.hosts,
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mount_at(spec, "/etc/resolv.conf")["source"] == POD.resolv_conf
    assert mount_at(spec, "/etc/hostname")["source"] == POD.hostname_file


def test_pod_shm_is_bound_over_the_default_tmpfs() -> None:
    shm = mount_at(build(), "/dev/shm")
    assert shm["type"] == "bind" and shm["source"] == POD.shm


def test_without_pod_shm_a_private_tmpfs() -> None:
    shm = mount_at(build(pod=replace(POD, shm=None)), "/dev/shm")
    assert shm["type"] == "tmpfs"
    assert "mode=1777" in shm["options"]


def test_missing_pod_files_are_not_mounted() -> None:
    pod = replace(POD, hosts=None, resolv_conf=None, hostname_file=None)
    assert not any(d.startswith("/etc/") for d in destinations(build(pod=pod)))


def test_readonly_rootfs_makes_pod_files_readonly_but_not_shm() -> None:
    spec = build(container(security={"readonly_rootfs": True}))
    assert spec["root"] == {"path": "/run/cri-async/c1/rootfs", "readonly": True}
    for dst in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        assert mount_at(spec, dst)["options"][-1] == "ro"
    assert mount_at(spec, "/dev/shm")["options"][-1] == "rw"


def test_writable_rootfs() -> None:
    assert build()["root"]["readonly"] is False


def cri(path: str, **kw: object) -> Mount:
    return Mount(container_path=path, host_path="/var/lib/kubelet/pods/x/volumes" + path, **kw)  # type: ignore[arg-type]


def test_cri_mount_defaults_to_rbind_rprivate_rw() -> None:
    spec = build(container(mounts=(cri("/data"),)))
    assert mount_at(spec, "/data") == {
        "destination": "/data",
        "type": "bind",
        "source": "/var/lib/kubelet/pods/x/volumes/data",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert "rootfsPropagation" not in spec["linux"]


def test_readonly_cri_mount() -> None:
    spec = build(container(mounts=(cri("/cfg", readonly=True),)))
    assert mount_at(spec, "/cfg")["options"] == ["rbind", "rprivate", "ro"]


def test_recursive_readonly_cri_mount() -> None:
    spec = build(container(mounts=(cri("/cfg", readonly=True, recursive_read_only=True),)))
    assert mount_at(spec, "/cfg")["options"] == ["rbind", "rprivate", "rro"]


def test_recursive_readonly_needs_readonly() -> None:
    with pytest.raises(SpecError, match="needs readonly"):
        build(container(mounts=(cri("/cfg", recursive_read_only=True),)))


def test_recursive_readonly_needs_private_propagation() -> None:
    m = cri(
        "/cfg", readonly=True, recursive_read_only=True, propagation=Propagation.HOST_TO_CONTAINER
    )
    with pytest.raises(SpecError, match="private propagation"):
        build(container(mounts=(m,)))


def test_recursive_readonly_unsupported_by_the_runtime() -> None:
    m = cri("/cfg", readonly=True, recursive_read_only=True)
    with pytest.raises(SpecError, match="not supported"):
        build(container(mounts=(m,)), host=replace(HOST, recursive_read_only=False))


@pytest.mark.parametrize(
    ("propagations", "option", "rootfs"),
    [
        ((Propagation.PRIVATE,), "rprivate", None),
        ((Propagation.HOST_TO_CONTAINER,), "rslave", "rslave"),
        ((Propagation.BIDIRECTIONAL,), "rshared", "rshared"),
        ((Propagation.HOST_TO_CONTAINER, Propagation.BIDIRECTIONAL), "rslave", "rshared"),
        ((Propagation.BIDIRECTIONAL, Propagation.HOST_TO_CONTAINER), "rshared", "rshared"),
    ],
)
def test_propagation(
    propagations: tuple[Propagation, ...], option: str, rootfs: str | None
) -> None:
    mounts = tuple(cri(f"/m{i}", propagation=p) for i, p in enumerate(propagations))
    spec = build(container(mounts=mounts))
    assert mount_at(spec, "/m0")["options"][1] == option
    assert spec["linux"].get("rootfsPropagation") == rootfs


def test_extra_mount_options_are_appended_once() -> None:
    spec = build(container(mounts=(cri("/d", options=("nosuid", "rbind", "noexec")),)))
    assert mount_at(spec, "/d")["options"] == ["rbind", "rprivate", "rw", "nosuid", "noexec"]


def test_idmapped_cri_mount() -> None:
    m = cri(
        "/d",
        uid_mappings=(IDMapping(host_id=100000, container_id=0, length=65536),),
        gid_mappings=(IDMapping(host_id=100000, container_id=0, length=65536),),
    )
    out = mount_at(build(container(mounts=(m,))), "/d")
    assert out["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert out["gidMappings"] == out["uidMappings"]


def test_idmapped_mount_needs_both_mappings() -> None:
    m = cri("/d", uid_mappings=(IDMapping(1, 0, 1),))
    with pytest.raises(SpecError, match="go together"):
        build(container(mounts=(m,)))


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (Mount(container_path="data", host_path="/x"), "not an absolute path"),
        (Mount(container_path="/", host_path="/x"), "root directory"),
        (Mount(container_path="/d"), "has no host path"),
        (Mount(container_path="/d", image=ImageSpec(image="busybox")), "image volume"),
    ],
)
def test_bad_cri_mounts(mount: Mount, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build(container(mounts=(mount,)))


def test_cri_mount_replaces_pod_file() -> None:
    spec = build(container(mounts=(cri("/etc/hosts"),)))
    assert mount_at(spec, "/etc/hosts")["source"] == "/var/lib/kubelet/pods/x/volumes/etc/hosts"


def test_cri_mount_replaces_default_mount() -> None:
    spec = build(container(mounts=(cri("/dev/shm/"), cri("/sys/fs/cgroup"))))
    assert mount_at(spec, "/dev/shm/")["type"] == "bind"
    assert "/dev/shm" not in destinations(spec)  # neither the default tmpfs nor the pod's
    assert mount_at(spec, "/sys/fs/cgroup")["type"] == "bind"


def test_cri_dev_mount_replaces_every_default_under_dev() -> None:
    spec = build(container(mounts=(cri("/dev"),)), pod=replace(POD, shm=None))
    assert [d for d in destinations(spec) if d.startswith("/dev")] == ["/dev"]
    assert mount_at(spec, "/dev")["type"] == "bind"


def test_pod_shm_still_goes_over_a_cri_dev_mount() -> None:
    spec = build(container(mounts=(cri("/dev"),)))
    assert [d for d in destinations(spec) if d.startswith("/dev")] == ["/dev", "/dev/shm"]


def test_mounts_sorted_parents_first() -> None:
    mounts = (cri("/a/b/c"), cri("/a"), cri("/proc/x"), cri("/a/b"))
    dsts = destinations(build(container(mounts=mounts)))
    assert dsts.index("/a") < dsts.index("/a/b") < dsts.index("/a/b/c")
    assert dsts.index("/proc") < dsts.index("/proc/x")


def test_cri_mount_over_a_parent_of_a_default_mount_comes_first() -> None:
    dsts = destinations(build(container(mounts=(cri("/sys/fs"),))))
    assert dsts.index("/sys") < dsts.index("/sys/fs") < dsts.index("/sys/fs/cgroup")


def test_same_depth_keeps_order() -> None:
    dsts = destinations(build(container(mounts=(cri("/z"), cri("/a")))))
    assert dsts.index("/z") < dsts.index("/a")


def test_privileged_sysfs_and_cgroupfs_are_writable() -> None:
    spec = build(container(security={"privileged": True}), sb=sandbox(privileged=True))
    assert "rw" in mount_at(spec, "/sys")["options"]
    assert "ro" not in mount_at(spec, "/sys")["options"]
    assert "rw" in mount_at(spec, "/sys/fs/cgroup")["options"]


def test_userns_on_host_network_binds_host_sys() -> None:
    userns = UserNS(
        mode=NamespaceMode.POD,
        uids=(IDMapping(100000, 0, 65536),),
        gids=(IDMapping(100000, 0, 65536),),
    )
    ctr = container(security={"namespaces": ns(userns=userns)})
    sys = mount_at(build(ctr, pod=HOST_NET_POD), "/sys")
    assert sys["type"] == "bind" and sys["source"] == "/sys" and "rro" in sys["options"]
    assert mount_at(build(ctr), "/sys")["type"] == "sysfs"  # own netns: sysfs is fine


def test_clean_and_depth() -> None:
    assert clean("/a//b/../c/") == "/a/c"
    assert [depth(p) for p in ("/", "/a", "/a/b/", "//a/./b/c")] == [0, 1, 2, 3]


segment = st.sampled_from(["a", "b", "c", "dev", "sys", "proc", "etc", "shm", "fs"])
paths = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(st.lists(paths, max_size=10), st.booleans(), st.booleans())
def test_property_a_parent_always_precedes_its_children(
    dsts: list[str], privileged: bool, with_shm: bool
) -> None:
    cri_mounts = [Mount(container_path=d, host_path="/h" + d) for d in dsts]
    pod = [Mount(container_path="/etc/hosts", host_path="/p/hosts")]
    if with_shm:
        pod.append(Mount(container_path="/dev/shm", host_path="/p/shm"))
    mounts, _ = build_mounts(cri_mounts, pod, privileged=privileged)
    seen = [clean(m["destination"]) for m in mounts]
    for i, earlier in enumerate(seen):
        for later in seen[i + 1 :]:
            assert not earlier.startswith(later + "/"), (later, "after its child", earlier)
    # Every CRI mount is present; a default or pod mount only where no CRI mount is.
    cri_set = {clean(d) for d in dsts}
    assert cri_set <= set(seen)
    for m in mounts:
        if m["type"] != "bind" or m["source"].startswith("/p/"):
            assert clean(m["destination"]) not in cri_set
