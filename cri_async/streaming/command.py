"""Runs one exec or attach session between client streams and a backend Session, whatever
carries the streams (SPDY or WebSocket).

The rules are kubelet's: the process starts only once every stream is there (the transport
layer sees to that), output is copied until the process is gone and its output drained, and
stdin EOF never holds the end back. On stdin EOF an exec's process gets its stdin closed; an
attach closes the container's stdin only for ``stdin_once`` without a tty (what makes
``sh`` exit), and otherwise just detaches this client. Resize messages are applied as they
come (sizes with a zero are ignored, as containerd does). A client that goes away ends
everything, and the session is always closed (an exec'd process killed) on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cri_async.streaming.backend import OutputStream, Session, StreamStartError
from cri_async.streaming.remotecommand import Outcome, OutcomeKind, ResizeDecoder, ResizeError

log = logging.getLogger("cri_async.streaming.command")

SESSION_CLOSE_TIMEOUT = 10.0


class ByteSource(Protocol):
    async def read(self) -> bytes:
        """The next bytes; b"" at end of input."""
        ...


class ByteSink(Protocol):
    async def write(self, data: bytes) -> None:
        """Raises ConnectionError when the client is gone."""
        ...


@dataclass(frozen=True, slots=True)
class ClientStreams:
    stdin: ByteSource | None
    stdout: ByteSink | None
    stderr: ByteSink | None
    resize: ByteSource | None
    lost: asyncio.Event  # the client connection ended


class ClientGone(Exception):
    pass


async def run_session(
    streams: ClientStreams,
    start: Callable[[], Awaitable[Session]],
    *,
    attach: bool,
    tty: bool,
    stdin_once: bool = False,
) -> Outcome | None:
    """The outcome to report on the error stream; None if the client went away."""
    try:
        session = await start()
    except StreamStartError as e:
        return Outcome(OutcomeKind.INTERNAL, message=str(e))
    except Exception as e:  # a backend failure is the client's InternalError, not ours
        log.exception("starting the stream session failed")
        return Outcome(OutcomeKind.INTERNAL, message=str(e) or type(e).__name__)
    try:
        return await _run(streams, session, attach=attach, tty=tty, stdin_once=stdin_once)
    finally:
        await _close(session)


async def _close(session: Session) -> None:
    """Close the session within its own time limit, even while being cancelled: an exec'd
    process must not outlive its connection."""
    closing = asyncio.ensure_future(session.close())
    try:
        await asyncio.wait_for(asyncio.shield(closing), SESSION_CLOSE_TIMEOUT)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, SESSION_CLOSE_TIMEOUT)
        raise
    except TimeoutError:
        log.warning("closing a stream session took over %.0f s", SESSION_CLOSE_TIMEOUT)
    except Exception:
        log.exception("closing a stream session failed")


async def _run(
    streams: ClientStreams, session: Session, *, attach: bool, tty: bool, stdin_once: bool
) -> Outcome | None:
    detached = asyncio.Event()

    async def copy_output() -> None:
        while (chunk := await session.read_output()) is not None:
            sink = streams.stdout
            if chunk.stream is OutputStream.STDERR and not tty:
                sink = streams.stderr
            if sink is None:
                continue
            try:
                await sink.write(chunk.data)
            except ConnectionError:
                raise ClientGone from None

    async def copy_stdin(src: ByteSource) -> None:
        while data := await src.read():
            try:
                await session.write_stdin(data)
            except (ConnectionError, OSError) as e:
                # The process stopped reading (exited): drop input, keep the output.
                log.debug("stdin no longer accepted: %s", e)
                return
        if not attach or (stdin_once and not tty):
            with contextlib.suppress(ConnectionError, OSError):
                await session.close_stdin()
        else:
            detached.set()

    async def apply_resizes(src: ByteSource) -> None:
        decoder = ResizeDecoder()
        while data := await src.read():
            try:
                sizes = decoder.feed(data)
            except ResizeError as e:
                log.info("ignoring the rest of a bad resize stream: %s", e)
                return
            for size in sizes:
                if size.width and size.height:
                    await session.resize(size)

    async def guarded(what: str, coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception as e:  # input trouble never ends the session by itself
            log.info("%s stopped: %r", what, e)

    output = asyncio.create_task(copy_output())
    lost = asyncio.create_task(streams.lost.wait())
    stop = asyncio.create_task(detached.wait())
    tasks: list[asyncio.Task[Any]] = [output, lost, stop]
    if streams.stdin is not None:
        tasks.append(asyncio.create_task(guarded("stdin", copy_stdin(streams.stdin))))
    if streams.resize is not None:
        tasks.append(asyncio.create_task(guarded("resize", apply_resizes(streams.resize))))
    try:
        await asyncio.wait({output, lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        if output.done():
            exc = output.exception()
            if isinstance(exc, ClientGone):
                return None
            if exc is not None:
                log.error("reading the session's output failed: %r", exc)
                return Outcome(OutcomeKind.INTERNAL, message=f"reading output: {exc}")
        elif lost.done():
            return None
        if attach:
            return Outcome(OutcomeKind.SUCCESS)
        waiter = asyncio.create_task(session.wait())
        tasks.append(waiter)
        await asyncio.wait({waiter, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            return None
        if (exc := waiter.exception()) is not None:
            return Outcome(OutcomeKind.INTERNAL, message=f"waiting for the exit code: {exc}")
        return Outcome.from_exit_code(waiter.result())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
