"""ttrpc, containerd's RPC protocol for shims, on asyncio.

``framing`` (the 10-byte frame header) and ``protocol`` (client and server connection state)
are sans I/O; ``client`` and ``server`` drive them over unix sockets; ``errors`` maps status
codes to exceptions. Messages are ours, generated from ``proto/ttrpc/ttrpc.proto``.
"""

from .client import Client, reachable, socket_path
from .errors import Code, ConnectionClosed, TTRPCError, error_for
from .server import CallContext, Server

__all__ = [
    "CallContext",
    "Client",
    "Code",
    "ConnectionClosed",
    "Server",
    "TTRPCError",
    "error_for",
    "reachable",
    "socket_path",
]
