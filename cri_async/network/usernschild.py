"""The program that makes a pod's namespaces inside a new user namespace. It is run as
``python -I -S usernschild.py HOSTNAME KINDS [PAUSE ARGV...]`` by ``pins.py``, never
imported, and uses the standard library only.

Why a program of its own: a user namespace can only be created (or entered) by a
single-threaded process, and the pod's network, IPC, UTS and PID namespaces must be owned by
it, so that root in the pod's containers may mount sysfs, proc and mqueue for them and
configure its own network. cri-async is threaded; this child is not.

``KINDS`` is a comma-separated subset of ``net,ipc,uts,pid``; with ``pid`` the pause argv
is spawned as the new PID namespace's init (in its own session, stdio on /dev/null).

Protocol, one line each way on stdin/stdout:

* child: ``user`` once it is in the new user namespace;
* parent: ``mapped`` once it has written the child's uid_map and gid_map;
* child: ``ready <pause pid>`` (0 without ``pid``) once the namespaces are made;
* the parent bind-mounts the child's namespaces, then closes stdin; the child exits 0.

On failure the child writes ``error <message>`` and exits 1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import sys

CLONE = {
    "user": 0x10000000,
    "net": 0x40000000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "pid": 0x20000000,
}
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def unshare(libc: ctypes.CDLL, flags: int) -> None:
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def spawn_init(argv: list[str]) -> int:
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return os.posix_spawn(argv[0], argv, env, file_actions=devnull, setsid=True)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    hostname, kinds = argv[1], [k for k in argv[2].split(",") if k]
    pause = argv[3:]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    try:
        unshare(libc, CLONE["user"])
        say("user")
        if sys.stdin.readline().strip() != "mapped":
            return 1  # the parent gave up
        flags = 0
        for k in kinds:
            if k != "pid":
                flags |= CLONE[k]
        if flags:
            unshare(libc, flags)
        if "uts" in kinds:
            socket.sethostname(hostname)
        if "net" in kinds:
            loopback_up()
        pause_pid = 0
        if "pid" in kinds:
            unshare(libc, CLONE["pid"])  # for the children spawned from now on
            pause_pid = spawn_init(pause)
    except OSError as e:
        say(f"error {e}")
        return 1
    say(f"ready {pause_pid}")
    sys.stdin.read()  # until the parent has pinned what it needs
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
