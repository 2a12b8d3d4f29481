"""Reads the facts ``cri_async.hostcheck`` judges: binaries and their versions, CNI files,
/proc, registry files, directories. ``proc`` is injectable (a fake procfs in tests).

Synchronous: ``cri-async check`` is a one-shot command, not the server.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from cri_async.backends.shimv2.bootstrap import binary_name
from cri_async.config import Config, HandlerConfig
from cri_async.hostcheck import (
    CNIFacts,
    DirFacts,
    Facts,
    Handler,
    Program,
    RegistryFacts,
    SocketState,
)
from cri_async.network.cniconf import CONFIG_EXTENSIONS
from cri_async.registry.auth import AuthError, load_credentials_file
from cri_async.registry.hosts import HostsConfigError, load_hosts_toml

VERSION_TIMEOUT = 10.0


def program(name: str, flag: str = "--version") -> Program:
    path = shutil.which(name)
    if path is None:
        return Program(name, None)
    try:
        out = subprocess.run(
            [path, flag],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return Program(name, path, error=f"--version failed: {e}")
    text = out.stdout or out.stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The line naming the version (a shim's -v prints its name on a line of its own).
    first = next((line for line in lines if "version" in line.lower()), lines[0] if lines else "")
    if out.returncode != 0:
        return Program(name, path, error=f"{flag} exited {out.returncode}: {first}")
    return Program(name, path, version=first)


def handler_program(h: HandlerConfig) -> Program | None:
    """What a handler runs, checked (None for the fake backend): a shim v2 handler's shim
    binary (``-v``), else the OCI runtime (``--version``)."""
    if h.backend == "fake":
        return None
    if h.backend == "shimv2":
        try:
            shim = h.runtime_type if os.path.isabs(h.runtime_type) else binary_name(h.runtime_type)
        except ValueError:
            return Program(h.runtime_type, None)
        return program(shim, "-v")
    return program(h.binary or h.backend)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cni_facts(config: Config) -> CNIFacts:
    files: dict[str, str] = {}
    for d in config.network.conf_dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if n.endswith(CONFIG_EXTENSIONS):
                files[os.path.join(d, n)] = _read(Path(d, n))
    plugins: set[str] = set()
    for d in config.network.bin_dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        plugins.update(e.name for e in entries if e.is_file() and os.access(e.path, os.X_OK))
    return CNIFacts(
        tuple(config.network.conf_dirs), files, tuple(config.network.bin_dirs), frozenset(plugins)
    )


def registry_facts(config: Config) -> RegistryFacts:
    reg = config.registry
    hosts: list[str] = []
    errors: list[str] = []
    root = Path(reg.config_path) if reg.config_path else None
    if root is not None and root.is_dir():
        for d in sorted(root.iterdir()):
            f = d / "hosts.toml"
            if f.is_file():
                hosts.append(d.name)
                try:
                    for ep in load_hosts_toml(f, d.name):
                        errors += [
                            f"{f}: CA {c} does not exist" for c in ep.ca if not Path(c).exists()
                        ]
                except HostsConfigError as e:
                    errors.append(str(e))
    cred_error = ""
    if reg.credentials_file:
        if not Path(reg.credentials_file).exists():
            cred_error = "does not exist (no credentials are used)"
        else:
            try:
                load_credentials_file(reg.credentials_file)
            except AuthError as e:
                cred_error = str(e)
    missing_ca = tuple(c for files in reg.ca.values() for c in files if not Path(c).exists())
    return RegistryFacts(
        config_path=reg.config_path,
        config_path_exists=root is not None and root.is_dir(),
        hosts=tuple(hosts),
        hosts_errors=tuple(errors),
        mirrors={h: tuple(u) for h, u in reg.mirrors.items()},
        credentials_file=reg.credentials_file,
        credentials_error=cred_error,
        missing_ca=missing_ca,
    )


def dir_facts(path: Path) -> DirFacts:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return DirFacts(str(path), path.is_dir(), p.is_dir() and os.access(p, os.W_OK | os.X_OK))


def socket_state(path: Path) -> SocketState:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return SocketState.ABSENT
    if not stat.S_ISSOCK(st.st_mode):
        return SocketState.NOT_A_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError as e:
            if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return SocketState.STALE
            raise
    return SocketState.LIVE


def gather(config: Config, *, proc: Path = Path("/proc")) -> Facts:
    handlers = tuple(
        Handler(name, h.backend, handler_program(h)) for name, h in config.runtimes.items()
    )
    real = any(h.program is not None for h in handlers)
    sock = Path(config.server.socket)
    try:
        oom = int(_read(proc / "self/oom_score_adj").strip() or 0)
    except ValueError:
        oom = 0
    return Facts(
        euid=os.geteuid(),
        handlers=handlers,
        conmon=program(config.runtime.conmon) if real else None,
        cni=cni_facts(config) if real else None,
        mountinfo=_read(proc / "self/mountinfo"),
        proc_cgroups=_read(proc / "cgroups"),
        status=_read(proc / "self/status"),
        oom_score_adj=oom,
        filesystems=_read(proc / "filesystems"),
        registry=registry_facts(config) if config.images.backend == "registry" else None,
        socket=str(sock),
        socket_state=socket_state(sock),
        socket_dir=dir_facts(sock.parent),
        state_dir=dir_facts(Path(config.state.root)),
    )
