"""What the pure spec builder needs from the host, read here: the host's facts, a Localhost
seccomp profile, device nodes, a target container's PID namespace, the image's user
database (inside its root filesystem, never the host's)."""

from __future__ import annotations

import json
import os
import resource
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cri_async import rootfs
from cri_async.core.errors import FailedPrecondition, InvalidArgument
from cri_async.core.model import Container, Device, Image, ProfileType, SecurityProfile
from cri_async.oci import spec as oci
from cri_async.oci.defaults import capabilities_from_mask
from cri_async.oci.user import ResolvedUser, UserError, resolve_user

SECCOMP_PROFILE_MAX = 1 << 20


def host_facts() -> oci.HostFacts:
    status = Path("/proc/self/status").read_text()
    capbnd = next(line.split()[1] for line in status.splitlines() if line.startswith("CapBnd:"))
    oom = int(Path("/proc/self/oom_score_adj").read_text().strip() or 0)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return oci.HostFacts(
        bounding_caps=frozenset(capabilities_from_mask(int(capbnd, 16))),
        min_oom_score_adj=oom,
        nofile_hard=nofile if nofile != resource.RLIM_INFINITY else 1 << 20,
        apparmor=Path("/sys/kernel/security/apparmor").exists(),
        selinux=Path("/sys/fs/selinux/enforce").exists(),
        cgroup_v2=Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        hugetlb=Path("/sys/fs/cgroup/hugetlb").is_dir(),
    )


def seccomp_localhost(profile: SecurityProfile | None) -> dict[str, Any] | None:
    """The JSON of a Localhost seccomp profile (the file the request names), else None."""
    if profile is None or profile.type is not ProfileType.LOCALHOST:
        return None
    path = profile.localhost_ref.removeprefix("localhost/")
    if not os.path.isabs(path):
        raise InvalidArgument(f"seccomp localhost profile {path!r} must be an absolute path")
    try:
        with open(path, "rb") as f:
            data = f.read(SECCOMP_PROFILE_MAX + 1)
    except OSError as e:
        raise InvalidArgument(f"seccomp localhost profile {path!r}: {e.strerror}") from None
    if len(data) > SECCOMP_PROFILE_MAX:
        raise InvalidArgument(f"seccomp localhost profile {path!r} is larger than 1 MiB")
    try:
        loaded = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"seccomp localhost profile {path!r} is not JSON: {e}") from None
    if not isinstance(loaded, dict):
        raise InvalidArgument(f"seccomp localhost profile {path!r} is not a JSON object")
    return loaded


def _node(path: str) -> oci.DeviceNode | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        kind = "c"
    elif stat.S_ISBLK(mode):
        kind = "b"
    elif stat.S_ISFIFO(mode):
        kind = "p"
    else:
        return None
    return oci.DeviceNode(
        os.path.realpath(path),
        kind,
        os.major(st.st_rdev),
        os.minor(st.st_rdev),
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
    )


def device_nodes(devices: Sequence[Device]) -> dict[str, list[oci.DeviceNode]]:
    """For each requested device host path, the node there, or every node below a
    directory (e.g. /dev/snd); an empty list when nothing is there."""
    out: dict[str, list[oci.DeviceNode]] = {}
    for dev in devices:
        found: list[oci.DeviceNode] = []
        if os.path.isdir(dev.host_path):
            for root, _dirs, names in os.walk(dev.host_path):
                for name in sorted(names):
                    node = _node(os.path.join(root, name))
                    if node is not None:
                        found.append(node)
        else:
            node = _node(dev.host_path)
            if node is not None:
                found.append(node)
        out[dev.host_path] = found
    return out


def host_devices() -> list[oci.DeviceNode]:
    """Every device node under the host's /dev (what a privileged container gets)."""
    nodes: list[oci.DeviceNode] = []
    for root, dirs, names in os.walk("/dev"):
        dirs[:] = [d for d in dirs if d not in ("pts", "shm", "mqueue")]
        for name in sorted(names):
            node = _node(os.path.join(root, name))
            if node is not None and node.type in ("c", "b"):
                nodes.append(node)
    return nodes


def target_pidns(target: Container | None) -> str | None:
    """The PID namespace of a running target container (PID mode TARGET)."""
    if target is None:
        return None
    path = f"/proc/{target.pid}/ns/pid"
    if target.pid <= 0 or not os.path.exists(path):
        raise FailedPrecondition(f"target container {target.id} is not running")
    return path


def _text_in_root(root: Path, path: str) -> str | None:
    data = rootfs.read_in_root(root, path)
    return None if data is None else data.decode(errors="replace")


def container_user(container: Container, image: Image, rootfs_dir: Path) -> ResolvedUser:
    """The user the container runs as, from its security context and the image's own
    /etc/passwd and /etc/group (read inside the image)."""
    sec = container.config.security
    try:
        return resolve_user(
            image_user=image.user,
            run_as_user=sec.run_as_user,
            run_as_group=sec.run_as_group,
            run_as_username=sec.run_as_username,
            supplemental_groups=sec.supplemental_groups,
            policy=sec.supplemental_groups_policy,
            passwd=_text_in_root(rootfs_dir, "/etc/passwd"),
            group=_text_in_root(rootfs_dir, "/etc/group"),
        )
    except (UserError, rootfs.RootfsError) as e:
        raise InvalidArgument(f"container {container.metadata.name!r}: {e}") from None
