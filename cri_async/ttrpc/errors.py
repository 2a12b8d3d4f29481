"""ttrpc status codes (gRPC's) and the exceptions a call raises for them.

A response carries a status; code 0 is success, any other code becomes the matching
:class:`TTRPCError` subclass from :func:`error_for`. Shims built on containerd answer "no
such task" with NOT_FOUND, "exec id taken" with ALREADY_EXISTS, and plain failures of the
OCI runtime with UNKNOWN. :class:`ConnectionClosed` is not a status the peer sent: the
connection dropped (or was closed) before the answer came, like ttrpc's ``ErrClosed``.
"""

from __future__ import annotations

import enum

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "Code",
    "ConnectionClosed",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ProtocolError",
    "ResourceExhaustedError",
    "TTRPCError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "error_for",
]


class Code(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TTRPCError(Exception):
    """A call failed with a non-OK status. ``code`` is the status code, ``message`` the
    peer's text (or ours, for local failures)."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class CancelledError(TTRPCError):
    code = Code.CANCELLED


class UnknownError(TTRPCError):
    code = Code.UNKNOWN


class InvalidArgumentError(TTRPCError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceededError(TTRPCError):
    code = Code.DEADLINE_EXCEEDED


class NotFoundError(TTRPCError):
    code = Code.NOT_FOUND


class AlreadyExistsError(TTRPCError):
    code = Code.ALREADY_EXISTS


class PermissionDeniedError(TTRPCError):
    code = Code.PERMISSION_DENIED


class ResourceExhaustedError(TTRPCError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPreconditionError(TTRPCError):
    code = Code.FAILED_PRECONDITION


class AbortedError(TTRPCError):
    code = Code.ABORTED


class OutOfRangeError(TTRPCError):
    code = Code.OUT_OF_RANGE


class UnimplementedError(TTRPCError):
    code = Code.UNIMPLEMENTED


class InternalError(TTRPCError):
    code = Code.INTERNAL


class UnavailableError(TTRPCError):
    code = Code.UNAVAILABLE


class DataLossError(TTRPCError):
    code = Code.DATA_LOSS


class UnauthenticatedError(TTRPCError):
    code = Code.UNAUTHENTICATED


class ConnectionClosed(UnavailableError):
    """The connection closed (peer gone, or closed by us) before the call was answered."""


class ProtocolError(InternalError):
    """The peer sent bytes that are not valid ttrpc (an undecodable envelope)."""


_BY_CODE: dict[Code, type[TTRPCError]] = {
    cls.code: cls
    for cls in (
        CancelledError,
        UnknownError,
        InvalidArgumentError,
        DeadlineExceededError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        UnimplementedError,
        InternalError,
        UnavailableError,
        DataLossError,
        UnauthenticatedError,
    )
}


def error_for(code: int, message: str) -> TTRPCError:
    """The exception for a non-OK status code; codes outside gRPC's set count as UNKNOWN."""
    try:
        known = Code(code)
    except ValueError:
        return UnknownError(f"status code {code}: {message}")
    if known is Code.OK:
        raise ValueError("status OK is not an error")
    return _BY_CODE[known](message)
