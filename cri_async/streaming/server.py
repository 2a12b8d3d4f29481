"""The streaming server: one asyncio listener serving ``/{exec,attach,portforward}/<token>``
over HTTP/1.1, upgraded to SPDY/3.1 or WebSocket, optionally behind TLS.

Per connection, in kubelet's order: read the request head, consume the token (unknown,
reused, expired or wrong-kind tokens: 404), negotiate the subprotocol (400 without one,
403 with no match), check the upgrade headers (400), answer 101, then hand the socket to
the session. A WebSocket port-forward may carry SPDY inside (``ws_tunnel``). Every
connection is a task the server tracks, so ``close()`` ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from types import TracebackType

from wsproto.connection import Connection, ConnectionType

from cri_async.config import StreamingConfig
from cri_async.streaming import spdy_handlers, ws_handlers
from cri_async.streaming import ws_channels as ch
from cri_async.streaming.backend import StreamBackend
from cri_async.streaming.http1 import (
    BadRequest,
    Request,
    is_spdy,
    is_websocket,
    read_request,
    response,
    route,
    switching_protocols,
    websocket_accept,
)
from cri_async.streaming.remotecommand import (
    ACCEPTED_HEADER,
    PORT_FORWARD_PROTOCOL,
    PROTOCOL_HEADER,
    SPDY_EXEC_PROTOCOLS,
    NegotiationError,
    StreamProtocol,
    negotiate,
)
from cri_async.streaming.service import (
    PortForwardTarget,
    Route,
    Target,
    route_of,
)
from cri_async.streaming.spdy_io import SpdyEndpoint
from cri_async.streaming.spdy_session import Role, SpdyConnection
from cri_async.streaming.timeouts import Timeouts
from cri_async.streaming.tls import self_signed_context, server_context
from cri_async.streaming.tokens import TokenCache
from cri_async.streaming.ws_io import WebSocketEndpoint
from cri_async.streaming.ws_tunnel import PORT_FORWARD_TUNNEL as TUNNEL
from cri_async.streaming.ws_tunnel import TunnelReader, TunnelWriter, wants_tunnel

log = logging.getLogger("cri_async.streaming")

# SPDY receive windows we grant a flow-controlling peer (and the buffers behind them).
STREAM_WINDOW = 256 * 1024
SESSION_WINDOW = 4 * 1024 * 1024


class StreamingServer:
    def __init__(
        self,
        backend: StreamBackend,
        config: StreamingConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        base_path: str = "",
    ) -> None:
        self.backend = backend
        self.config = config or StreamingConfig()
        self.timeouts = Timeouts(
            idle=self.config.idle_timeout, stream_creation=self.config.stream_creation_timeout
        )
        self.tokens: TokenCache[Target] = TokenCache(clock)
        self.base_path = base_path.strip("/")
        self.certificate: bytes | None = None  # PEM of a self-signed certificate
        self._ssl: ssl.SSLContext | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._base_url = ""

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        if cfg.tls:
            if cfg.tls_cert_file:
                self._ssl = server_context(cfg.tls_cert_file, cfg.tls_key_file)
            else:
                self._ssl, self.certificate = await asyncio.to_thread(
                    self_signed_context, cfg.address
                )
        self._server = await asyncio.start_server(
            self._serve, cfg.address, cfg.port, ssl=self._ssl, reuse_address=True
        )
        port = self._server.sockets[0].getsockname()[1]
        self._base_url = f"{'https' if self._ssl else 'http'}://{self._host()}:{port}/"
        if self.base_path:
            self._base_url += self.base_path + "/"
        log.info("streaming server listening on %s", self._base_url)

    def _host(self) -> str:
        host = self.config.advertise_address or self.config.address
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        return f"[{ip}]" if ip.version == 6 else str(ip)

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("the streaming server is not started")
        return self._base_url

    def issue(self, target: Target) -> str:
        """Cache ``target`` under a new one-time token; the URL that redeems it."""
        token = self.tokens.insert(target)
        return f"{self.base_url}{route_of(target).value}/{token}"

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening and end every connection (sessions close their processes)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> StreamingServer:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connections(self) -> int:
        return len(self._connections)

    # -- connections ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handle(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            # close() cancelled us; end quietly (asyncio's server callback would log a
            # cancelled connection task as an error).
            writer.close()
        except (ConnectionError, TimeoutError, ssl.SSLError) as e:
            log.debug("streaming connection ended: %r", e)
            writer.close()
        except Exception:
            log.exception("streaming connection failed")
            writer.close()
        finally:
            self._connections.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, raw: bytes) -> None:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await read_request(reader, self.timeouts.request)
        except BadRequest as e:
            await self._answer(writer, response(400, f"bad request: {e}"))
            return
        if req is None:
            return
        matched = route(req.path, self.base_path)
        if matched is None:
            await self._answer(writer, response(404, "404 page not found\n"))
            return
        if req.method not in ("GET", "POST"):
            await self._answer(writer, response(405, "method not allowed\n"))
            return
        kind, token = matched
        target = self.tokens.consume(token)
        if target is None or route_of(target) is not kind:
            await self._answer(writer, response(404, "404 page not found\n"))
            return
        if is_websocket(req):
            await self._websocket(req, kind, target, reader, writer)
        else:
            await self._spdy(req, kind, target, reader, writer)

    async def _spdy(
        self,
        req: Request,
        kind: Route,
        target: Target,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        supported = (
            [PORT_FORWARD_PROTOCOL]
            if kind is Route.PORT_FORWARD
            else [p.value for p in SPDY_EXEC_PROTOCOLS]
        )
        try:
            chosen = negotiate(req.header_values(PROTOCOL_HEADER), supported)
        except NegotiationError as e:
            extra = [(ACCEPTED_HEADER, p) for p in supported] if e.status == 403 else []
            await self._answer(writer, response(e.status, f"{e}\n", extra))
            return
        if not is_spdy(req):
            await self._answer(
                writer, response(400, "unable to upgrade: missing upgrade headers in request\n")
            )
            return
        writer.write(
            switching_protocols(
                [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), (PROTOCOL_HEADER, chosen)]
            )
        )
        conn = SpdyConnection(
            Role.SERVER, initial_window=STREAM_WINDOW, session_window=SESSION_WINDOW
        )
        async with SpdyEndpoint(
            conn,
            reader,
            writer,
            idle_timeout=self.timeouts.idle,
            initial_data=req.trailing,
            stream_buffer=STREAM_WINDOW,
            connection_buffer=SESSION_WINDOW,
        ) as ep:
            if isinstance(target, PortForwardTarget):
                await spdy_handlers.serve_port_forward(ep, target, self.backend, self.timeouts)
            else:
                await spdy_handlers.serve_command(
                    ep, StreamProtocol(chosen), target, self.backend, self.timeouts
                )

    async def _websocket(
        self,
        req: Request,
        kind: Route,
        target: Target,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if req.method != "GET":
            await self._answer(writer, response(405, "websocket needs GET\n"))
            return
        key = req.header("sec-websocket-key")
        if not key or req.header("sec-websocket-version") != "13":
            await self._answer(writer, response(400, "bad websocket handshake\n"))
            return
        offered_header = req.header_values("sec-websocket-protocol")
        offered = [p.strip() for v in offered_header for p in v.split(",")]
        supported = ch.PORT_FORWARD_PROTOCOLS if kind is Route.PORT_FORWARD else ch.EXEC_PROTOCOLS
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", websocket_accept(key)),
        ]
        if isinstance(target, PortForwardTarget) and wants_tunnel(
            offered, [p.value for p in supported]
        ):
            writer.write(switching_protocols([*headers, ("Sec-WebSocket-Protocol", TUNNEL)]))
            await self._tunnel(req, target, reader, writer)
            return
        protocol = ch.negotiate(offered, supported)
        if protocol is None:
            await self._answer(writer, response(403, ""))
            return
        if offered_header:
            headers.append(("Sec-WebSocket-Protocol", protocol.value))
        writer.write(switching_protocols(headers))
        conn = Connection(ConnectionType.SERVER, trailing_data=req.trailing)
        async with WebSocketEndpoint(conn, reader, writer, idle_timeout=self.timeouts.idle) as ep:
            if isinstance(target, PortForwardTarget):
                await ws_handlers.serve_port_forward(
                    ep, protocol, target, self.backend, self.timeouts
                )
            else:
                await ws_handlers.serve_command(ep, protocol, target, self.backend, self.timeouts)

    async def _tunnel(
        self,
        req: Request,
        target: PortForwardTarget,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """A SPDY port-forward session inside the WebSocket (``ws_tunnel``)."""
        conn = Connection(ConnectionType.SERVER, trailing_data=req.trailing)
        async with WebSocketEndpoint(conn, reader, writer, idle_timeout=self.timeouts.idle) as ws:
            spdy = SpdyConnection(
                Role.SERVER, initial_window=STREAM_WINDOW, session_window=SESSION_WINDOW
            )
            async with SpdyEndpoint(
                spdy,
                TunnelReader(ws),
                TunnelWriter(ws),
                idle_timeout=self.timeouts.idle,
                stream_buffer=STREAM_WINDOW,
                connection_buffer=SESSION_WINDOW,
            ) as ep:
                await spdy_handlers.serve_port_forward(ep, target, self.backend, self.timeouts)
