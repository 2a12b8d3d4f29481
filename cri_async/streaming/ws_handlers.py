"""Exec/attach and port-forward sessions over an upgraded WebSocket connection.

One dispatcher task routes received messages to per-channel inboxes (bounded: a full inbox
stops the dispatcher, which stops the socket reader). Channels the session does not use
swallow what arrives on them. The session ends with the status on the error channel and a
close frame 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cri_async.streaming import ws_channels as ch
from cri_async.streaming.backend import StreamBackend
from cri_async.streaming.command import ClientStreams, run_session
from cri_async.streaming.portforward import forward_error
from cri_async.streaming.queues import Inbox
from cri_async.streaming.remotecommand import encode_status
from cri_async.streaming.service import AttachTarget, ExecTarget, PortForwardTarget
from cri_async.streaming.timeouts import Timeouts
from cri_async.streaming.ws_io import CLOSE_PROTOCOL_ERROR, WebSocketClosed, WebSocketEndpoint

log = logging.getLogger("cri_async.streaming.websocket")

FORWARD_CHUNK = 32 * 1024


class ChannelWriter:
    def __init__(self, ep: WebSocketEndpoint, protocol: ch.ChannelProtocol, channel: int) -> None:
        self.ep = ep
        self.protocol = protocol
        self.channel = channel

    async def write(self, data: bytes) -> None:
        await self.ep.send(ch.encode(self.protocol, self.channel, data))


async def _dispatch(
    ep: WebSocketEndpoint, protocol: ch.ChannelProtocol, channels: int, inboxes: dict[int, Inbox]
) -> None:
    try:
        while (msg := await ep.receive()) is not None:
            try:
                item = ch.decode(protocol, msg, channels)
            except ch.ChannelProtocolError as e:
                log.info("websocket protocol error: %s", e)
                await ep.aclose(CLOSE_PROTOCOL_ERROR, grace=0.0)
                return
            match item:
                case ch.ChannelData(channel, data) if channel in inboxes:
                    await inboxes[channel].put(data)
                case ch.ChannelClose(channel) if channel in inboxes:
                    inboxes[channel].close()
    finally:
        for inbox in inboxes.values():
            inbox.close()


async def serve_command(
    ep: WebSocketEndpoint,
    protocol: ch.ChannelProtocol,
    target: ExecTarget | AttachTarget,
    backend: StreamBackend,
    timeouts: Timeouts,
) -> None:
    stdio = target.stdio
    inboxes: dict[int, Inbox] = {}
    if stdio.stdin:
        inboxes[ch.STDIN] = Inbox()
    if stdio.tty:
        inboxes[ch.RESIZE] = Inbox()

    def writer(channel: int) -> ChannelWriter:
        return ChannelWriter(ep, protocol, channel)

    stdout = writer(ch.STDOUT) if stdio.stdout else None
    stderr = writer(ch.STDERR) if stdio.stderr and not stdio.tty else None
    dispatcher = asyncio.create_task(_dispatch(ep, protocol, ch.EXEC_CHANNELS, inboxes))
    try:
        # The first (empty) message tells the client the connection is up.
        hello = ch.STDOUT if stdout else ch.STDERR if stderr else ch.ERROR
        await ep.send(ch.encode(protocol, hello, b""))
        streams = ClientStreams(
            stdin=inboxes.get(ch.STDIN),
            stdout=stdout,
            stderr=stderr,
            resize=inboxes.get(ch.RESIZE),
            lost=ep.closed,
        )
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
            return
        payload = encode_status(outcome, protocol.json_status)
        if payload:
            await ep.send(ch.encode(protocol, ch.ERROR, payload))
    except WebSocketClosed:
        return
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher
    await ep.aclose(grace=timeouts.finish)


async def serve_port_forward(
    ep: WebSocketEndpoint,
    protocol: ch.ChannelProtocol,
    target: PortForwardTarget,
    backend: StreamBackend,
    timeouts: Timeouts,
) -> None:
    ports = target.ports
    inboxes = {2 * i: Inbox() for i in range(len(ports))}
    dispatcher = asyncio.create_task(_dispatch(ep, protocol, 2 * len(ports), inboxes))
    try:
        for i, port in enumerate(ports):
            await ep.send(ch.encode(protocol, 2 * i, ch.port_prefix(port)))
            await ep.send(ch.encode(protocol, 2 * i + 1, ch.port_prefix(port)))
        forwards = [
            asyncio.create_task(_forward(ep, protocol, target, backend, i, inboxes[2 * i]))
            for i in range(len(ports))
        ]

        async def all_ended() -> None:
            if forwards:
                await asyncio.wait(forwards)

        lost = asyncio.create_task(ep.closed.wait())
        ended = asyncio.create_task(all_ended())
        try:
            await asyncio.wait({lost, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*forwards, lost, ended):
                t.cancel()
            await asyncio.gather(*forwards, lost, ended, return_exceptions=True)
    except WebSocketClosed:
        return
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher
    await ep.aclose(grace=timeouts.finish)


async def _forward(
    ep: WebSocketEndpoint,
    protocol: ch.ChannelProtocol,
    target: PortForwardTarget,
    backend: StreamBackend,
    index: int,
    inbox: Inbox,
) -> None:
    port = target.ports[index]
    data_ch, error_ch = 2 * index, 2 * index + 1
    try:
        reader, writer = await backend.port_forward(target.sandbox_id, port)
    except Exception as e:
        msg = forward_error(port, target.sandbox_id, e)
        with contextlib.suppress(WebSocketClosed):
            await ep.send(ch.encode(protocol, error_ch, msg.encode()))
        return

    async def up() -> None:
        while chunk := await inbox.read():
            writer.write(chunk)
            await writer.drain()

    up_task = asyncio.create_task(up())
    try:
        while chunk := await reader.read(FORWARD_CHUNK):
            await ep.send(ch.encode(protocol, data_ch, chunk))
    except OSError as e:
        if not isinstance(e, WebSocketClosed):
            msg = forward_error(port, target.sandbox_id, e)
            with contextlib.suppress(WebSocketClosed):
                await ep.send(ch.encode(protocol, error_ch, msg.encode()))
    finally:
        up_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await up_task
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
