"""systemd's readiness protocol (sd_notify), written directly: one datagram per state change.

With ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a unix datagram socket (a path, or
``@name`` in the abstract namespace), and waits for ``READY=1`` before it considers the
service started; ``STOPPING=1`` says shutdown has begun. Without the variable (not started
by systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("cri_async.sdnotify")


def notify_address(env: Mapping[str, str]) -> str | None:
    """The socket address ``$NOTIFY_SOCKET`` names (abstract: leading NUL), or None."""
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # unset, or a transport we do not speak (vsock)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=value`` lines); False when nobody listens.
    Never blocks: a full receive queue loses the message, with a log line."""
    addr = notify_address(os.environ if env is None else env)
    if addr is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.setblocking(False)
        try:
            s.sendto(state.encode(), addr)
        except OSError as e:
            log.warning("sd_notify %s to %s failed: %s", state.split("\n", 1)[0], addr, e)
            return False
    return True
