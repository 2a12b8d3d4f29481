"""Domain errors. The gRPC edge maps each class to one status code (services/rpc.py)."""

from __future__ import annotations


class CRIError(Exception):
    """Base of every error the runtime reports to a caller; the message is for humans."""


class InvalidArgument(CRIError):
    """The request itself is malformed (missing metadata, bad selector, oversized name...)."""


class NotFound(CRIError):
    """The named object does not exist."""


class AlreadyExists(CRIError):
    """A create names an object that another object already holds."""


class FailedPrecondition(CRIError):
    """The object exists but is in the wrong state for the operation."""


class PermissionDenied(CRIError):
    """A registry refused the credentials (or their absence)."""


class DeadlineExceeded(CRIError):
    """The operation ran out of time (e.g. an ExecSync timeout)."""


class Unimplemented(CRIError):
    """The operation is not implemented (yet) by this runtime or backend."""


class Unavailable(CRIError):
    """The server is shutting down or a dependency is temporarily not usable."""


class ResourceExhausted(CRIError):
    """A configured limit (size, count, free space, outstanding streaming tokens) would be
    exceeded; the message names it."""


class Internal(CRIError):
    """An unexpected failure below the runtime (backend, store); message says what failed."""
