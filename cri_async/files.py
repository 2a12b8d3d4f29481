"""Small file reads and writes the adapters share: tolerant reads of files another process
writes (pid files, exit codes), and atomic, durable replacement of our own files."""

from __future__ import annotations

import os
from pathlib import Path


def read_text(path: Path) -> str | None:
    """The file's text, or None if it (or a parent) does not exist or cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return None


def read_if_exists(path: Path) -> bytes | None:
    """Our own file's bytes, or None if it does not exist (any other error is raised: a
    file we cannot read is not the same as no file)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_int(path: Path) -> int | None:
    """An integer written into a file (a pid, an exit code), or None."""
    text = (read_text(path) or "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader (or a crash) sees the old or the new
    content, never a part; ``durable`` also fsyncs the file and its directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


PRIVATE_DIR = 0o711
"""Our state roots: other users may pass through (a user-namespaced container's runtime
must reach its root filesystem) but not list them."""


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if missing; the directory itself becomes 0711."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def private_file(path: Path) -> None:
    """Create ``path`` if missing; it becomes readable by its owner (root) only."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    os.chmod(path, 0o600)


def read_pid(path: Path) -> int | None:
    """A process id from a pid file: a positive integer, else None (never 0 or -1, which
    would signal a whole process group or every process)."""
    value = read_int(path)
    return value if value is not None and value > 0 else None


def allow_traversal(path: Path) -> list[Path]:
    """Give ``path`` and every ancestor the search (x) permission for everyone; the
    directories changed. Read permission is not given: names stay private, but a process
    whose uid is not mapped to an owner (an OCI runtime inside a pod's user namespace) can
    walk to a path it is told, as containerd's 0711 state directories allow."""
    changed: list[Path] = []
    for d in (path, *path.parents):
        mode = d.stat().st_mode
        if not mode & 0o001:
            os.chmod(d, (mode & 0o7777) | 0o111)
            changed.append(d)
    return changed
