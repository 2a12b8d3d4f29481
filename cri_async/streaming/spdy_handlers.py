"""Exec/attach (remotecommand) and port-forward sessions over an upgraded SPDY connection.

remotecommand: every stream the cached request implies must be opened (and replied to)
before the process starts; teardown follows kubelet: stop input (RST stdin and resize),
write the status, FIN stdout/stderr/error, then let the client close the connection first
(bounded), so no output still in flight is lost to a TCP reset.

port-forward: the client opens an (error, data) stream pair per connection, tied by the
``requestid`` header, each naming the ``port``; a complete pair is forwarded to the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from cri_async.streaming import spdy_frames as f
from cri_async.streaming.backend import StreamBackend
from cri_async.streaming.command import ClientStreams, run_session
from cri_async.streaming.portforward import forward_error, parse_port, request_id
from cri_async.streaming.remotecommand import (
    STREAM_TYPE_HEADER,
    StreamProtocol,
    StreamType,
    encode_status,
    expected_streams,
)
from cri_async.streaming.service import AttachTarget, ExecTarget, PortForwardTarget
from cri_async.streaming.spdy_io import SpdyEndpoint, SpdyStream, StreamError
from cri_async.streaming.timeouts import Timeouts

log = logging.getLogger("cri_async.streaming.spdy")

FORWARD_CHUNK = 32 * 1024
# After the pod side ended, how long the client's side may still send before we close.
HALF_CLOSE_GRACE = 1.0


async def _refuse_more(ep: SpdyEndpoint) -> None:
    """Streams opened after setup have no role: refuse them."""
    while (st := await ep.accept()) is not None:
        st.reset(f.RstStatus.REFUSED_STREAM)


async def serve_command(
    ep: SpdyEndpoint,
    protocol: StreamProtocol,
    target: ExecTarget | AttachTarget,
    backend: StreamBackend,
    timeouts: Timeouts,
) -> None:
    stdio = target.stdio
    expected = expected_streams(stdio, protocol)
    got: dict[StreamType, SpdyStream] = {}
    extra: list[SpdyStream] = []
    try:
        async with asyncio.timeout(timeouts.stream_creation):
            while set(got) != expected:
                st = await ep.accept()
                if st is None:
                    return
                st.reply()
                kind = StreamType.parse(st.header(STREAM_TYPE_HEADER))
                if kind in expected and kind not in got:
                    got[kind] = st
                elif kind in got:
                    st.reset(f.RstStatus.PROTOCOL_ERROR)
                else:
                    log.info("ignoring a stream of unexpected type %r", st.header("streamtype"))
                    extra.append(st)
    except TimeoutError:
        log.info(
            "timed out waiting for the client to create streams (%s)",
            sorted(k.value for k in expected),
        )
        return
    error = got[StreamType.ERROR]
    stdin = got.get(StreamType.STDIN)
    stdout = got.get(StreamType.STDOUT)
    stderr = got.get(StreamType.STDERR)
    resize = got.get(StreamType.RESIZE)
    if protocol is StreamProtocol.V1:
        # v1 servers half-closed stdin and reset the error stream right after setup;
        # v1 clients expect exactly that.
        if stdin is not None:
            stdin.end()
        error.reset()
    streams = ClientStreams(
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        resize=resize,
        lost=ep.closed,
    )
    refuser = asyncio.create_task(_refuse_more(ep))
    try:
        if isinstance(target, ExecTarget):
            outcome = await run_session(
                streams,
                lambda: backend.exec(target.container_id, target.cmd, stdio),
                attach=False,
                tty=stdio.tty,
            )
        else:
            outcome = await run_session(
                streams,
                lambda: backend.attach(target.container_id, stdio),
                attach=True,
                tty=stdio.tty,
                stdin_once=target.stdin_once,
            )
        if outcome is None:
            return  # the client went away
        for st in (stdin, resize, *extra):
            if st is not None:
                st.reset()
        payload = encode_status(outcome, protocol.json_status)
        if payload and not error.local_closed:
            with contextlib.suppress(StreamError):
                await error.write(payload)
        for st in (stdout, stderr, error):
            if st is not None:
                st.end()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeouts.finish):
                await ep.closed.wait()
    finally:
        refuser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refuser


# -- port-forward -------------------------------------------------------------------------


@dataclass
class _Pair:
    port: int
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


async def serve_port_forward(
    ep: SpdyEndpoint, target: PortForwardTarget, backend: StreamBackend, timeouts: Timeouts
) -> None:
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()

    def expire(rid: str) -> None:
        pair = pairs.pop(rid, None)
        if pair is None:
            return
        tasks.add(asyncio.create_task(_fail(pair, "timed out waiting for streams")))

    try:
        while (st := await ep.accept()) is not None:
            kind = StreamType.parse(st.header(STREAM_TYPE_HEADER))
            port = parse_port(st.header("port"))
            if kind not in (StreamType.ERROR, StreamType.DATA) or port is None:
                log.info("refusing a port-forward stream with headers %s", st.headers)
                st.reset(f.RstStatus.REFUSED_STREAM)
                continue
            st.reply()
            rid = request_id(st.header("requestid"), kind, st.stream_id)
            pair = pairs.get(rid)
            if pair is None:
                pair = pairs[rid] = _Pair(port)
                loop = asyncio.get_running_loop()
                pair.timer = loop.call_later(timeouts.stream_creation, expire, rid)
            if (pair.error if kind is StreamType.ERROR else pair.data) is not None:
                failing = asyncio.create_task(
                    _fail(pair, f"received multiple {kind.value} streams for request {rid}", st)
                )
                tasks.add(failing)
                failing.add_done_callback(tasks.discard)
                continue
            if kind is StreamType.ERROR:
                pair.error = st
            else:
                pair.data = st
            if pair.error is not None and pair.data is not None:
                del pairs[rid]
                if pair.timer is not None:
                    pair.timer.cancel()
                task = asyncio.create_task(_forward(pair, target, backend))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for pair in pairs.values():
            if pair.timer is not None:
                pair.timer.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _fail(pair: _Pair, message: str, extra: SpdyStream | None = None) -> None:
    if pair.error is not None and not pair.error.local_closed:
        with contextlib.suppress(StreamError):
            await pair.error.write(message.encode())
    for st in (pair.data, pair.error, extra):
        if st is not None:
            st.reset()


async def _forward(pair: _Pair, target: PortForwardTarget, backend: StreamBackend) -> None:
    assert pair.error is not None
    assert pair.data is not None
    data, error = pair.data, pair.error
    try:
        reader, writer = await backend.port_forward(target.sandbox_id, pair.port)
    except Exception as e:
        await _fail(pair, forward_error(pair.port, target.sandbox_id, e))
        return

    async def down() -> None:  # pod → client
        while chunk := await reader.read(FORWARD_CHUNK):
            await data.write(chunk)
        data.end()

    async def up() -> None:  # client → pod
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        if data.reset_status is not None:
            raise StreamError("the client reset the data stream")
        if writer.can_write_eof():
            writer.write_eof()  # the client's FIN, passed on as a TCP half-close

    down_task = asyncio.create_task(down())
    up_task = asyncio.create_task(up())
    try:
        done, _ = await asyncio.wait({down_task, up_task}, return_when=asyncio.FIRST_COMPLETED)
        failure = next((t.exception() for t in done if t.exception() is not None), None)
        if failure is None and not down_task.done():
            # the client half-closed (FIN): the pod's answer still flows
            await asyncio.wait({down_task})
            failure = down_task.exception()
        if isinstance(failure, StreamError):
            data.reset()
            error.reset()
        elif failure is not None:
            await _fail(pair, forward_error(pair.port, target.sandbox_id, failure))
        else:
            error.end()  # client-go waits for the error stream's end before it lets go
            if not up_task.done():
                await asyncio.wait({up_task}, timeout=HALF_CLOSE_GRACE)
    finally:
        for t in (down_task, up_task):
            t.cancel()
        await asyncio.gather(down_task, up_task, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        data.reset()
        error.reset()
