"""The one place domain errors become gRPC statuses, plus the per-RPC wrapper.

Every handler goes through ``unary``/``server_stream``: it gets the decoded request (read
within ``server.max_request_bytes``, see ``limits``) and runs, the read included, under a
deadline (the client's, capped by ``server.rpc_timeout``), is logged at debug
with its duration, reported to the server's observer (metrics, trace span), and any domain
error leaves as the status below.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from grpclib import GRPCError, Status
from grpclib.server import Stream

from cri_async import faults
from cri_async.core import errors
from cri_async.observe import Observer
from cri_async.services.limits import recv_request

log = logging.getLogger("cri_async.rpc")

STATUS_FOR: dict[type[errors.CRIError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.PermissionDenied: Status.PERMISSION_DENIED,
    errors.DeadlineExceeded: Status.DEADLINE_EXCEEDED,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,
    errors.Unimplemented: Status.UNIMPLEMENTED,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.Internal: Status.INTERNAL,
}


MAX_STATUS_MESSAGE = 1024
"""Characters of a status message: it travels in a trailer (percent-encoded), and a
client's HTTP/2 header list limit (64 KiB in grpclib) must not be exceeded by a message
that quotes a huge value from the request."""


def status_message(text: str) -> str:
    if len(text) <= MAX_STATUS_MESSAGE:
        return text
    cut = len(text) - MAX_STATUS_MESSAGE
    return f"{text[:MAX_STATUS_MESSAGE]}... ({cut} more characters)"


def to_status(exc: errors.CRIError) -> Status:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return Status.INTERNAL


class Tracker(Protocol):
    """What a service needs from the server: the RPC time cap, the request size cap,
    in-flight accounting and the observer every RPC reports to."""

    rpc_timeout: float
    max_request_bytes: int
    observer: Observer

    def begin(self) -> None: ...
    def end(self) -> None: ...


Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S", bound="Service")


class Service:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker


@contextlib.contextmanager
def _errors_mapped(name: str) -> Iterator[None]:
    try:
        yield
    except errors.CRIError as e:
        log.debug("%s failed: %s", name, status_message(str(e)))
        raise GRPCError(to_status(e), status_message(str(e))) from None
    except (GRPCError, asyncio.CancelledError):
        raise
    except TimeoutError:
        raise GRPCError(Status.DEADLINE_EXCEEDED, f"{name}: deadline exceeded") from None
    except Exception as e:
        log.exception("%s failed unexpectedly", name)
        raise GRPCError(Status.INTERNAL, status_message(f"{name}: internal error: {e!r}")) from None


@contextlib.contextmanager
def _observed(
    svc: Service, name: str, stream: Stream[Any, Any], *, inflight: bool
) -> Iterator[None]:
    """The per-RPC hook: in-flight count, metrics and trace span, debug log line."""
    call = svc.tracker.observer.rpc(type(svc).__name__, name, stream.metadata)
    if inflight:
        svc.tracker.begin()
    code = Status.OK
    try:
        yield
    except GRPCError as e:
        code = e.status
        raise
    except asyncio.CancelledError:
        code = Status.CANCELLED
        raise
    except BaseException:
        code = Status.UNKNOWN
        raise
    finally:
        if inflight:
            svc.tracker.end()
        seconds = call.finish(code.name)
        log.debug("rpc %s took %.3f ms", name, seconds * 1e3)


def _budget(svc: Service, stream: Stream[Any, Any]) -> float:
    cap = svc.tracker.rpc_timeout
    if stream.deadline is not None:
        return min(cap, max(stream.deadline.time_remaining(), 0.0))
    return cap


def unary(
    fn: Callable[[S, Req], Awaitable[Resp]],
) -> Callable[[S, Stream[Req, Resp]], Coroutine[Any, Any, None]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self: S, stream: Stream[Req, Resp]) -> None:
        with _observed(self, name, stream, inflight=True), faults.serving(name):
            with _errors_mapped(name):
                async with asyncio.timeout(_budget(self, stream)):
                    request = await recv_request(stream, self.tracker.max_request_bytes)
                    reply = await fn(self, request)
            await stream.send_message(reply)

    return handler


def server_stream(
    fn: Callable[[S, Req], AsyncIterator[Resp]],
    *,
    bounded: bool = True,
) -> Callable[[S, Stream[Req, Resp]], Coroutine[Any, Any, None]]:
    """A server-streaming RPC. ``bounded=False`` for subscriptions that live as long as
    the client wants (GetContainerEvents), which the shutdown ends instead of a timer."""
    name = fn.__name__

    @functools.wraps(fn)
    async def handler(self: S, stream: Stream[Req, Resp]) -> None:
        with (
            _observed(self, name, stream, inflight=bounded),
            faults.serving(name),
            _errors_mapped(name),
        ):
            async with asyncio.timeout(_budget(self, stream)):
                request = await recv_request(stream, self.tracker.max_request_bytes)
            budget = _budget(self, stream) if bounded else None
            async with asyncio.timeout(budget):
                async for reply in fn(self, request):
                    await stream.send_message(reply)

    return handler


def unbounded_stream(
    fn: Callable[[S, Req], AsyncIterator[Resp]],
) -> Callable[[S, Stream[Req, Resp]], Coroutine[Any, Any, None]]:
    return server_stream(fn, bounded=False)
