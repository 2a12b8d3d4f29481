"""The time limits of streaming connections (configured in ``[streaming]``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeouts:
    # A connection with no traffic either way for this long is closed.
    idle: float = 4 * 3600.0
    # How long a client may take to open every stream a session needs.
    stream_creation: float = 30.0
    # After the status is written, how long the client may take to close the connection
    # (it reads the remaining output first).
    finish: float = 60.0
    # How long a client may take to send its request head.
    request: float = 30.0
