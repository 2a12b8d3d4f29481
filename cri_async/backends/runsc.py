"""The gVisor backend: one runsc sandbox per pod, the pod's containers inside it.

A pod is the runc family's pinned namespaces and pod files (``OCIBackend``) plus an *infra
container* that is the gVisor sandbox: a read-only rootfs holding one static pause binary
(Debian's ``catatonit -P``, or busybox-static ``sleep``), created and started by
RunPodSandbox with the annotations ``io.kubernetes.cri.container-type=sandbox`` and
``io.kubernetes.cri.sandbox-id=<pod id>``; its runsc container id is the pod id. No image
is pulled for it. Containers carry ``container-type=container`` and the same sandbox id,
so runsc starts them inside that sandbox (platform.md row 3d).

Networking (row 3b): by default runsc runs with ``--network=host`` and the infra spec names
the pod's pinned netns, so the sandbox uses the host kernel's stack *inside the pod netns*:
the pod's interfaces and loopback are the netns's, as with runc, and host-side tools that
enter the netns (port-forward, CNI) see what the containers see. ``network="sandbox"``
selects gVisor's own netstack (more isolation); its setup, in both ``create`` and ``start``
of the sandbox, refuses any netns on this kernel (gVisor #10704), so those two commands run
under the tested workaround ``unshare -m --propagation private sh -c 'mount -t tmpfs none
/proc/sys/net && exec "$@"'``. In that mode the pod's loopback lives inside gVisor and a
host-side connection into the netns does not reach it, hence host mode is the default.
``network="none"`` gives the pod a loopback only. A host-network pod always gets host mode.

conmon and runsc (row 2i): conmon's ``-r`` is a generated wrapper script (one per handler
root, rewritten by ``probe``) that drops ``--tty`` and runs runsc in its own session.

Container stdio and exit codes. runsc gives a subcontainer the stdio of the ``runsc start``
process, not of ``create``, and every subcontainer's host pid is the sandbox's, so plain
conmon sees neither output nor exit (row 3d). The wrapper solves both without giving up
conmon: when conmon runs ``create`` for a bundle holding the ``start`` FIFO, the wrapper runs
``runsc create`` and then forks a *holder* (the wrapper re-run with ``--cri-async-hold``),
writing the holder's pid as the container pid. The holder keeps conmon's stdio pipes and
blocks on the FIFO. StartContainer writes a line to it; the holder runs ``runsc start``
with conmon's pipes as its stdio (so the sandbox writes the container's output straight into
conmon, which writes the CRI log and handles attach and log reopening as it does for runc),
reports start's exit code on the ``started`` FIFO, then runs ``runsc wait`` and exits with
the container's exit status, which conmon records as the exit file. Holder and conmon
outlive a restart of cri-async just as conmon does for runc. The cost is one idle ``runsc
wait`` per running container (about 4 MB of private memory; the binary's pages are shared).
If the sandbox itself dies, ``runsc wait`` fails: the container exits 255 with a message
saying so, or 137/OOMKilled when the sandbox's memory cgroup recorded an OOM kill.

The alternative, one gVisor sandbox per container, would let conmon work unchanged but
costs a sandbox boot (~170 ms and a Sentry's memory) per container, and containers of a pod
would no longer share a kernel (loopback, IPC, /dev/shm semantics differ from Kubernetes').

Spec adjustments (rows 3e, 8a): sysctls are dropped (runsc does not apply them), capabilities
this runsc does not know (CAP_PERFMON, CAP_BPF, CAP_CHECKPOINT_RESTORE) are removed (with
them "all caps" fails), ``oomScoreAdj`` is at least 0, no ``rro`` mount option. The spec's
seccomp profile is enforced because ``--oci-seccomp`` is always passed (it only acts on
specs that carry a profile). Containers with a tty are refused: runsc wants the console
socket at ``create`` and uses it at ``start``, after conmon has closed it.

Resources (row 3c): there is no ``runsc update``; UpdateContainerResources writes the v1
cgroup files of the container's ``cgroupsPath`` (which runsc creates). All of a pod's host
processes live in the sandbox's cgroup (``<pod cgroup>/<pod id>``), so the host enforces
the pod-level limits only; per-container values are recorded for accounting.

Exec (row 2g): through conmon as for runc. The exec'd process runs inside the sandbox, so
killing the host-side ``runsc exec`` on timeout would leave it running: the wrapper asks
runsc for its sandbox pid (``--internal-pid-file``) and a timed-out exec is killed by that
pid as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import shlex
import shutil
import signal as signals
import struct
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cri_async import cgroupfs, files, proc, waits
from cri_async.backends.base import (
    BackendStatus,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessStatus,
    StartError,
)
from cri_async.backends.oci import OCIBackend
from cri_async.backends.ocicli import RuntimeCLI, RuntimeCLIError
from cri_async.cgroupfs import CGROUP_ROOT, write_cgroup_resources
from cri_async.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
)
from cri_async.core.model import Container, Image, Resources, Sandbox
from cri_async.monitor.conmon import Conmon
from cri_async.network.cni import CNI
from cri_async.network.pins import NamespacePinner
from cri_async.oci import spec as oci
from cri_async.oci.errors import runtime_message

__all__ = [
    "NETWORK_MODES",
    "RunscBackend",
    "RunscCLI",
    "adjust_container_spec",
    "find_infra_binary",
    "infra_spec",
    "wrapper_script",
]

log = logging.getLogger("cri_async.backends.runsc")

NETWORK_MODES = ("host", "sandbox", "none")

START_FIFO = "start"
"""In a container's bundle: the holder reads a line from it, then runs ``runsc start``."""
STARTED_FIFO = "started"
"""In a container's bundle: the holder writes ``runsc start``'s exit code to it."""
START_LOG = "start.log"
"""In a container's bundle: ``runsc start``'s error messages (``--log``, JSON lines)."""
WAIT_LOG = "wait.log"
"""In a container's bundle: why ``runsc wait`` failed (the sandbox died under the container);
the holder then exits 255."""
INTERNAL_PID = "internal.pid"
"""In an exec's work dir: if present, the wrapper asks runsc to write the exec'd process's
pid in the sandbox's root pid namespace there (``runsc kill --pid`` takes that pid)."""
HOLD_FLAG = "--cri-async-hold"

# Capabilities newer than this runsc (0.0~20221219): a spec naming one fails at start.
UNKNOWN_CAPS = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})

INFRA_UID = 65535
"""The infra process runs as this user with no capabilities (as the pause image does)."""

_INFRA_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("catatonit", ("-P",)),
    ("/usr/libexec/podman/catatonit", ("-P",)),
    ("busybox", ("sleep", "2147483647")),
)
_INFRA_DIRS = ("dev", "proc", "sys", "etc", "tmp")
_STOP_WAIT = 5.0
"""Seconds to wait for a killed sandbox (or a holder's conmon) to exit."""


# --------------------------------------------------------------------------------------------
# pure parts


def wrapper_script(runsc: str, global_args: Sequence[str]) -> str:
    """The script conmon runs as its OCI runtime (``-r``) for this handler.

    ``global_args`` are the runsc flags every command gets (``--root=...`` included); conmon
    passes them too, the holder needs them for its own ``start`` and ``wait``.
    """
    flags = " ".join(shlex.quote(a) for a in global_args)
    return f"""#!/bin/sh
# Generated by cri-async (cri_async/backends/runsc.py) at startup; do not edit.
# conmon runs this as its OCI runtime: runsc without --tty, in its own session, and for
# pod containers a holder that gives `runsc start` conmon's stdio (see the module's notes).
runsc() {{ {shlex.quote(runsc)} {flags} "$@"; }}

if [ "${{1-}}" = {HOLD_FLAG} ]; then
    # The holder. fds 0-2: conmon's pipes; fd 3: the start FIFO, open since create.
    bundle=$2 cid=$3
    read -r _ <&3 || exit 255
    exec 3<&-
    runsc --log="$bundle/{START_LOG}" start "$cid"
    rc=$?
    exec 4<>"$bundle/{STARTED_FIFO}"
    echo "$rc" >&4
    exec 4>&- </dev/null >/dev/null 2>&1
    [ "$rc" -eq 0 ] || exit 255
    out=$(runsc wait "$cid" 2>>"$bundle/{WAIT_LOG}")
    case $out in
    *'"exitStatus":'*)
        code=${{out##*'"exitStatus":'}}
        code=${{code%%[!0-9]*}}
        ;;
    *) code= ;;
    esac
    exit "${{code:-255}}"
fi

for a do
    shift
    [ "$a" = --tty ] || set -- "$@" "$a"
done

cmd= bundle= pidfile= cid= prev=
for a do
    case $prev in
    --bundle | -bundle | -b) bundle=$a ;;
    --pid-file | -pid-file) pidfile=$a ;;
    esac
    case $a in
    --bundle=* | -bundle=*) bundle=${{a#*=}} ;;
    --pid-file=* | -pid-file=*) pidfile=${{a#*=}} ;;
    -*) ;;
    *) [ -n "$cmd" ] || cmd=$a ;;
    esac
    prev=$a cid=$a
done

if [ "$cmd" = create ] && [ -n "$bundle" ] && [ -p "$bundle/{START_FIFO}" ]; then
    exec 3<>"$bundle/{START_FIFO}" || exit 1
    setsid {shlex.quote(runsc)} "$@" 3<&- || exit
    setsid "$0" {HOLD_FLAG} "$bundle" "$cid" &
    echo "$!" >"$pidfile"
    exit 0
fi

if [ "$cmd" = exec ] && [ -n "$pidfile" ]; then
    ipid=${{pidfile%/*}}
    ipid=${{ipid%/*}}/{INTERNAL_PID}
    if [ -f "$ipid" ]; then
        seen=
        for a do
            shift
            set -- "$@" "$a"
            if [ -z "$seen" ] && [ "$a" = exec ]; then
                seen=1
                set -- "$@" "--internal-pid-file=$ipid"
            fi
        done
    fi
fi

exec setsid {shlex.quote(runsc)} "$@"
"""


def _is_static_elf(path: str) -> bool:
    """A 64-bit little-endian ELF executable without a program interpreter."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            phoff = struct.unpack_from("<Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if len(table) < (i + 1) * phentsize:
            return False
        if struct.unpack_from("<I", table, i * phentsize)[0] == 3:  # PT_INTERP
            return False
    return True


def find_infra_binary(wanted: str = "") -> tuple[str, tuple[str, ...]] | None:
    """(host path, argv in the infra rootfs) of the static pause binary, or None.

    The binary sits in the infra rootfs under its own name (busybox picks its applet by
    that). ``wanted`` (a path or name) replaces the search; it gets catatonit's ``-P``
    unless it is a busybox.
    """
    candidates = _INFRA_CANDIDATES
    if wanted:
        args: tuple[str, ...] = (
            ("sleep", "2147483647") if "busybox" in os.path.basename(wanted) else ("-P",)
        )
        candidates = ((wanted, args),)
    for name, args in candidates:
        path = shutil.which(name)
        real = os.path.realpath(path) if path else ""
        if real and _is_static_elf(real):
            return real, (f"/{os.path.basename(real)}", *args)
    return None


def infra_spec(
    sandbox: Sandbox,
    *,
    rootfs: str,
    args: Sequence[str],
    netns: str | None,
    hostname: str,
    cgroups_path: str,
    oom_score_adj: int,
) -> dict[str, Any]:
    """config.json of the pod's infra container (the gVisor sandbox itself); ``args`` is
    the pause binary's argv in ``rootfs``."""
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if netns:
        namespaces.append({"type": "network", "path": netns})
    m = sandbox.metadata
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": INFRA_UID, "gid": INFRA_UID},
            "args": list(args),
            "env": ["PATH=/"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": True,
            "oomScoreAdj": max(0, oom_score_adj),
        },
        "root": {"path": rootfs, "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
        ],
        "annotations": {
            **sandbox.config.annotations,
            oci.ANNOTATION_CONTAINER_TYPE: "sandbox",
            oci.ANNOTATION_SANDBOX_ID: sandbox.id,
            oci.ANNOTATION_SANDBOX_NAME: m.name,
            oci.ANNOTATION_SANDBOX_NAMESPACE: m.namespace,
            oci.ANNOTATION_SANDBOX_UID: m.uid,
        },
        "linux": {"cgroupsPath": cgroups_path, "namespaces": namespaces},
    }
    if hostname:
        spec["hostname"] = hostname
    return spec


def adjust_container_spec(spec: dict[str, Any], sandbox_id: str) -> list[str]:
    """Make a container's config.json acceptable to runsc, in place; one note per change."""
    notes: list[str] = []
    linux = spec.setdefault("linux", {})
    sysctls = linux.pop("sysctl", None)
    if sysctls:
        notes.append(f"sysctls not applied by runsc, dropped: {', '.join(sorted(sysctls))}")
    process = spec.get("process") or {}
    caps = process.get("capabilities") or {}
    dropped: set[str] = set()
    for kind, names in list(caps.items()):
        if isinstance(names, list):
            dropped.update(n for n in names if n in UNKNOWN_CAPS)
            caps[kind] = [n for n in names if n not in UNKNOWN_CAPS]
    if dropped:
        notes.append(f"capabilities unknown to runsc, dropped: {', '.join(sorted(dropped))}")
    oom = process.get("oomScoreAdj")
    if isinstance(oom, int) and oom < 0:
        process["oomScoreAdj"] = 0
        notes.append(f"oomScoreAdj {oom} raised to 0")
    annotations = spec.setdefault("annotations", {})
    annotations[oci.ANNOTATION_CONTAINER_TYPE] = "container"
    annotations[oci.ANNOTATION_SANDBOX_ID] = sandbox_id
    return notes


def _start_log_message(path: Path) -> str:
    """The messages of runsc's ``--log`` file (JSON lines ``{"msg": ..., "level": ...}``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    msgs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            msgs.append(line)
            continue
        if isinstance(rec, dict) and rec.get("msg"):
            msgs.append(str(rec["msg"]))
    return "; ".join(msgs)[-2000:]


def _cmdline_has(pid: int, *needles: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return all(n in cmdline for n in needles)


# --------------------------------------------------------------------------------------------
# runsc CLI


class RunscCLI(RuntimeCLI):
    """runsc keeps a container's state in ``ROOT/<cid>_sandbox:<sandbox>.state`` files, not
    in a ``ROOT/<cid>`` directory; an unknown container fails with exit 128."""

    def _known(self, cid: str) -> bool:
        try:
            names = os.listdir(self.root)
        except OSError:
            return False
        prefix = f"{cid}_sandbox:"
        return any(n.startswith(prefix) and n.endswith(".state") for n in names)

    async def kill_pid(self, cid: str, pid: int, signal: int) -> None:
        """Signal one process of ``cid`` by its pid in the sandbox's root pid namespace."""
        await self._run("kill", "--pid", str(pid), cid, str(int(signal)), check=False)


# --------------------------------------------------------------------------------------------
# cgroups (v1; runsc has no `update`)


# --------------------------------------------------------------------------------------------
# the backend


class RunscBackend(OCIBackend):
    """A RuntimeClass handler running pods as gVisor sandboxes (see the module's notes).

    The arguments are ``OCIBackend``'s (``kind`` is "runsc") plus ``platform`` (runsc's
    ``--platform``: ptrace; kvm hangs on this host, platform.md 3a), ``network`` (one of
    ``NETWORK_MODES``) and ``infra_binary`` (path or name of the static pause binary; empty
    finds catatonit, then busybox).
    """

    def __init__(
        self,
        handler: str,
        *,
        binary: str = "runsc",
        run_root: Path,
        state_root: Path,
        conmon_binary: str,
        pinner: NamespacePinner,
        lowers: Callable[[str], list[str] | None],
        socket_dir: Path | None = None,
        cni: CNI | None = None,
        platform: str = "ptrace",
        network: str = "host",
        infra_binary: str = "",
    ) -> None:
        if network not in NETWORK_MODES:
            raise ValueError(f"runsc network mode {network!r} is not one of {NETWORK_MODES}")
        super().__init__(
            handler,
            kind="runsc",
            binary=binary,
            run_root=run_root,
            state_root=state_root,
            conmon_binary=conmon_binary,
            pinner=pinner,
            lowers=lowers,
            socket_dir=socket_dir,
            cni=cni,
        )
        self.platform = platform
        self.network = network
        self.infra_binary = infra_binary
        self.cli = RunscCLI(
            self.binary,
            str(run_root / "state"),
            extra_args=(f"--platform={platform}", f"--network={network}", "--oci-seccomp"),
        )
        self.wrapper = run_root / "conmon-runtime"
        self.conmon = Conmon(
            conmon_binary,
            runtime_path=str(self.wrapper),
            runtime_args=self.cli.global_args(),
            socket_dir=str(self.socket_dir),
        )
        self._infra: tuple[str, tuple[str, ...]] | None = None

    # -- paths -----------------------------------------------------------------------
    @property
    def infra_rootfs(self) -> Path:
        return self.root / "infra"

    def infra_bundle(self, sid: str) -> Path:
        return self.pod_dir(sid) / "infra"

    @property
    def host(self) -> oci.HostFacts:
        if self._host is None:
            # runsc knows no "rro" mount option.
            self._host = replace(super().host, recursive_read_only=False)
        return self._host

    # -- readiness -------------------------------------------------------------------
    async def probe(self) -> BackendStatus:
        missing = [b for b in (self.binary, self.conmon_binary) if not shutil.which(b)]
        if missing:
            return BackendStatus(
                False, "BinaryMissing", f"{', '.join(missing)} not found (handler {self.handler!r})"
            )
        if self._infra is None:
            self._infra = await asyncio.to_thread(find_infra_binary, self.infra_binary)
        if self._infra is None:
            return BackendStatus(
                False,
                "InfraBinaryMissing",
                f"no static pause binary for runsc pods (handler {self.handler!r}): "
                f"{self.infra_binary or 'install catatonit or busybox-static'}",
            )
        try:
            await asyncio.to_thread(self._prepare_files, self._infra[0])
        except OSError as e:
            return BackendStatus(False, "SetupFailed", f"runsc handler {self.handler!r}: {e}")
        return BackendStatus(
            True,
            features=HandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False),
            info={
                "backend": "runsc",
                "binary": self.binary,
                "root": str(self.root),
                "platform": self.platform,
                "network": self.network,
                "infra": " ".join([self._infra[0], *self._infra[1][1:]]),
            },
        )

    def _prepare_files(self, infra: str) -> None:
        for d in (
            self.root / "containers",
            self.exits,
            self.socket_dir,
            self.root / "pods",
            Path(self.cli.root),
        ):
            d.mkdir(parents=True, exist_ok=True)
        script = wrapper_script(self.binary, self.cli.global_args())
        if files.read_text(self.wrapper) != script or not os.access(self.wrapper, os.X_OK):
            tmp = self.wrapper.with_name(f".{self.wrapper.name}.{secrets.token_hex(4)}")
            tmp.write_text(script)
            tmp.chmod(0o755)
            tmp.replace(self.wrapper)
        rootfs = self.infra_rootfs
        for name in _INFRA_DIRS:
            (rootfs / name).mkdir(parents=True, exist_ok=True)
        target = rootfs / os.path.basename(infra)
        src = os.stat(infra)
        try:
            cur = target.stat()
            same = cur.st_size == src.st_size and int(cur.st_mtime) == int(src.st_mtime)
        except FileNotFoundError:
            same = False
        if not same:
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            shutil.copy2(infra, tmp)
            tmp.chmod(0o755)
            tmp.replace(target)

    # -- pods ------------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        if self._infra is None:
            status = await self.probe()
            if not status.ready:
                raise FailedPrecondition(status.message)
        sandbox = await super().create_sandbox(sandbox)
        try:
            pid = await self._start_infra(sandbox)
        except BaseException:
            await asyncio.shield(self.remove_sandbox(sandbox))
            raise
        info = dict(sandbox.backend_info, infra=sandbox.id, infraPid=str(pid))
        return sandbox.evolve(backend_info=info)

    def _sandbox_network(self, sandbox: Sandbox) -> str:
        # A host-network pod has no netns pin: runsc then uses the host's stack.
        return self.network if sandbox.backend_info.get("netns") else "host"

    async def _start_infra(self, sandbox: Sandbox) -> int:
        assert self._infra is not None
        sid = sandbox.id
        bundle = self.infra_bundle(sid)
        info = sandbox.backend_info
        netns = info.get("netns") or None
        spec = infra_spec(
            sandbox,
            rootfs=str(self.infra_rootfs),
            args=self._infra[1],
            netns=netns,
            hostname=info.get("hostname", ""),
            cgroups_path=f"{self._cgroup_parent(sandbox)}/{sid}",
            oom_score_adj=self.host.min_oom_score_adj,
        )
        await asyncio.to_thread(bundle.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(
            files.write_atomic, bundle / "config.json", json.dumps(spec).encode(), durable=False
        )
        network = self._sandbox_network(sandbox)
        pidfile = bundle / "pidfile"
        create = ["create", "--bundle", str(bundle), "--pid-file", str(pidfile), sid]
        await self._infra_command(network, create, bundle / "create.log", "create")
        pid = files.read_int(pidfile) or 0
        reaper = self.conmon.reaper
        if reaper is not None and pid > 0:
            reaper.adopt(pid)  # our orphan now: reap it at once so `runsc delete` is fast
        await self._infra_command(network, ["start", sid], bundle / "start.log", "start")
        log.debug("runsc sandbox %s: pid %d (network %s)", sid, pid, network)
        return pid

    async def _infra_command(self, network: str, args: list[str], out: Path, what: str) -> None:
        """Run ``runsc create``/``start`` for a pod's sandbox with the pod's network mode;
        its output goes to ``out``, never a pipe (the sandbox inherits create's stdio,
        platform.md 8i). Internal with runsc's message if it fails."""
        argv = [
            self.binary,
            f"--root={self.cli.root}",
            f"--platform={self.platform}",
            f"--network={network}",
            "--oci-seccomp",
            *args,
        ]
        if network == "sandbox":
            # gVisor #10704 (platform.md 3b): netstack setup (in create and start) refuses
            # any netns whose /proc/sys/net/core/rmem_default it can see, which this kernel
            # shows in every netns; hide it in a private mount namespace.
            script = 'mount -t tmpfs none /proc/sys/net && exec "$@"'
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "x", *argv]
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            rc = (await proc.run(argv, timeout=self.cli.timeout, output=fd)).returncode
        except proc.TimedOut:
            raise Internal(f"runsc {what} of the pod sandbox timed out") from None
        finally:
            os.close(fd)
        if rc != 0:
            text = runtime_message(await asyncio.to_thread(out.read_text, errors="replace"))
            raise Internal(f"runsc could not {what} the pod sandbox: {text[-2000:]}")

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        """Kill the sandbox (its containers were stopped before); state stays until remove."""
        sid = sandbox.id
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.kill(sid, signals.SIGKILL)
        pid = int(sandbox.backend_info.get("infraPid") or 0)
        mine = pid > 0 and _cmdline_has(pid, b"runsc-sandbox", sid.encode())
        if mine and not await waits.wait_pid_exit(pid, _STOP_WAIT):
            log.warning("runsc sandbox %s (pid %d) still running after SIGKILL", sid, pid)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        sid = sandbox.id
        with contextlib.suppress(RuntimeCLIError):
            await self.cli.delete(sid, force=True)
        await asyncio.to_thread(cgroupfs.remove, f"{self._cgroup_parent(sandbox)}/{sid}")
        await super().remove_sandbox(sandbox)

    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        # Infra containers are named by their pods' ids: those of live pods are not orphans,
        # those of vanished pods are removed by the base's container sweep.
        await asyncio.to_thread(Path(self.cli.root).mkdir, parents=True, exist_ok=True)
        return await super().reconcile(sandboxes, containers | sandboxes)

    # -- containers ------------------------------------------------------------------
    async def create_container(
        self, sandbox: Sandbox, container: Container, image: Image
    ) -> Container:
        if container.config.tty:
            raise InvalidArgument(
                f"container {container.metadata.name!r}: tty containers are not supported by "
                "the runsc handler (runsc takes the console at create and uses it at start)"
            )
        if not sandbox.backend_info.get("infra"):
            raise FailedPrecondition(f"pod sandbox {sandbox.id} has no runsc sandbox")
        return await super().create_container(sandbox, container, image)

    def _write_bundle(
        self, sandbox: Sandbox, container: Container, bundle: Path, spec: dict[str, Any]
    ) -> None:
        for note in adjust_container_spec(spec, sandbox.id):
            log.info("runsc container %s (%s): %s", container.id, container.metadata.name, note)
        super()._write_bundle(sandbox, container, bundle, spec)
        for name in (START_FIFO, STARTED_FIFO):
            path = bundle / name
            path.unlink(missing_ok=True)
            os.mkfifo(path, 0o600)
        (bundle / START_LOG).unlink(missing_ok=True)

    async def start_container(self, container: Container) -> int:
        bundle = self.bundle(container.id)
        try:
            async with asyncio.timeout(self.cli.timeout):
                rc = await self._signal_start(bundle, container.pid)
        except TimeoutError:
            raise StartError(f"runsc start took longer than {self.cli.timeout:g}s") from None
        if rc != 0:
            message = await asyncio.to_thread(_start_log_message, bundle / START_LOG)
            raise StartError(f"runsc start failed (exit {rc}): {message or 'no message'}")
        return container.pid

    async def _signal_start(self, bundle: Path, holder: int) -> int:
        """Tell the holder to run ``runsc start``; its exit code (255: the holder is gone)."""
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        try:
            rfd = os.open(bundle / STARTED_FIFO, os.O_RDWR | flags)
        except FileNotFoundError:
            raise StartError("the container's bundle has no start FIFO") from None
        pidfd = -1
        try:
            try:
                wfd = os.open(bundle / START_FIFO, os.O_WRONLY | flags)
            except OSError as e:
                if e.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
                raise StartError("the container's start helper is gone") from None
            try:
                os.write(wfd, b"start\n")
            finally:
                os.close(wfd)
            if holder > 0:
                with contextlib.suppress(ProcessLookupError):
                    pidfd = os.pidfd_open(holder)
            buf = b""
            while b"\n" not in buf:
                ready = await waits.wait_readable([rfd] if pidfd < 0 else [rfd, pidfd], None)
                # What the holder wrote before it exited is in the FIFO by now.
                with contextlib.suppress(BlockingIOError):
                    buf += os.read(rfd, 64)
                if pidfd in ready and b"\n" not in buf:
                    raise StartError("the container's start helper exited without starting it")
            text = buf.split(b"\n", 1)[0].strip()
            return int(text) if text.isdigit() else 255
        finally:
            os.close(rfd)
            if pidfd >= 0:
                os.close(pidfd)

    async def wait(self, container: Container) -> ExitStatus:
        return await asyncio.to_thread(self._explain, container, await super().wait(container))

    async def recover(self, container: Container) -> ProcessStatus:
        status = await super().recover(container)
        if status.exit is not None:
            return ProcessStatus(status.pid, self._explain(container, status.exit))
        # runsc reports the sandbox's pid for every container; ours is the holder's.
        return ProcessStatus(container.pid, None)

    def _explain(self, container: Container, status: ExitStatus) -> ExitStatus:
        """An exit the holder could not learn from runsc: the whole sandbox died (a kill,
        or the host's OOM killer in the pod sandbox's cgroup, platform.md 2d)."""
        bundle = self.bundle(container.id)
        why = files.read_text(bundle / WAIT_LOG)
        if status.exit_code != 255 or not why:
            return status
        why = why.strip().splitlines()[-1] if why.strip() else why
        if _sandbox_oom_killed(bundle, container.sandbox_id):
            return replace(
                status,
                exit_code=137,
                reason="OOMKilled",
                message="the pod's gVisor sandbox was killed for lack of memory",
            )
        return replace(status, message=f"the pod's gVisor sandbox is gone: {why}"[:2000])

    async def delete_container(self, container: Container) -> None:
        cid = container.id
        bundle = self.bundle(cid)
        # A created container that was never started has a holder waiting for the word.
        holder = files.read_int(bundle / "pidfile")
        if holder and holder > 0 and _cmdline_has(holder, HOLD_FLAG.encode(), cid.encode()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder, signals.SIGKILL)
        conmon_pid = self.conmon.conmon_pid(bundle)
        if conmon_pid and _cmdline_has(conmon_pid, b"conmon", cid.encode()):
            # It writes its exit files into the bundle: let it finish before the rmtree.
            await waits.wait_pid_exit(conmon_pid, _STOP_WAIT)
        await super().delete_container(container)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        bundle = self.bundle(container.id)
        spec = json.loads(await asyncio.to_thread((bundle / "config.json").read_text))
        process = dict(spec["process"], args=list(cmd), terminal=False)
        process.pop("consoleSize", None)
        workdir = bundle / "exec" / secrets.token_hex(8)
        marker = workdir / INTERNAL_PID

        def prepare() -> None:
            workdir.mkdir(parents=True)
            marker.touch()

        await asyncio.to_thread(prepare)
        try:
            done = await self.conmon.exec_sync(
                container.id, process, timeout=timeout, workdir=workdir, limit=limit
            )
            if done.timed_out:
                await self._kill_exec(container.id, marker)
        except BaseException:
            await asyncio.shield(self._kill_exec(container.id, marker))
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        if done.timed_out:
            raise DeadlineExceeded(f"command {list(cmd)!r} timed out after {timeout:g}s")
        return ExecResult(done.exit_code, done.stdout, done.stderr)

    async def _kill_exec(self, cid: str, marker: Path) -> None:
        """Kill an exec'd process inside the sandbox (the host-side runsc is already gone)."""
        pid = files.read_int(marker)
        if pid is not None and pid > 0:
            assert isinstance(self.cli, RunscCLI)
            await self.cli.kill_pid(cid, pid, signals.SIGKILL)

    async def update_resources(self, container: Container, resources: Resources) -> None:
        path = self.bundle(container.id) / "config.json"
        try:
            spec = json.loads(await asyncio.to_thread(path.read_text))
        except FileNotFoundError:
            raise FailedPrecondition(f"container {container.id} has no bundle") from None
        cgroup = str((spec.get("linux") or {}).get("cgroupsPath") or "")
        if not cgroup:
            raise FailedPrecondition(f"container {container.id} has no cgroupsPath")
        try:
            written = await asyncio.to_thread(write_cgroup_resources, cgroup, resources)
        except OSError as e:
            raise FailedPrecondition(f"cannot update container resources: {e}") from None
        log.debug("runsc container %s: wrote %s", container.id, ", ".join(written))


def _sandbox_oom_killed(bundle: Path, sandbox_id: str) -> bool:
    """Whether the v1 memory cgroup of the pod's sandbox (next to the container's own)
    recorded an OOM kill."""
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return False
    cgroup = str((spec.get("linux") or {}).get("cgroupsPath") or "")
    if not cgroup:
        return False
    parent = os.path.dirname(cgroup.rstrip("/")).strip("/")
    text = files.read_text(CGROUP_ROOT / "memory" / parent / sandbox_id / "memory.oom_control")
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value) > 0
    return False
