"""Shim processes: start one for a task, reconnect after our restart, shut down, clean up.

:class:`ShimManager` is what a backend holds (one per namespace and events endpoint);
each task it starts or loads is a :class:`Shim`. The steps, as containerd takes them:

1. ``start``: make ``<bundle>/log``, a FIFO the shim daemon dup2s onto its stderr (the
   daemon's open of it blocks until a reader exists, so we open ours first and copy its
   lines to our log), run ``<binary> ... start`` in the bundle, connect to the printed
   address, and ask Connect for the shim's pid. We record ``bootstrap.json`` (address and
   task API version, containerd 2.x's file) and ``shim-binary-path`` in the bundle.
2. Grouping: shims that serve a whole pod (runc's and Kata's, keyed by the
   ``io.kubernetes.cri.sandbox-id`` annotation of config.json) answer the ``start`` of the
   pod's second container with the first one's address. Tasks on one address share one
   ttrpc connection here.
3. ``load`` after a restart of our process: read the bundle's ``bootstrap.json`` (or the
   shim's own ``address`` file), reconnect, reopen the log FIFO, Connect to check.
   A shim that does not answer raises :class:`ShimGone`; clean it up with
   :meth:`ShimManager.delete_dead` (``shim delete``).
4. ``Shim.shutdown`` after the task is deleted: the Shutdown call (ignored by a shim that
   still serves other tasks). When this was the last task we know on the connection and
   the shim closes it, we wait for the shim process to exit (pidfd), killing it by the pid
   it reported if it lingers; a shim that keeps the connection open is serving tasks we do
   not know of, so it is left running.

A shim process is not our child: its ``start`` command forks it and exits, so it is
re-parented to the nearest subreaper. Its exit is watched with a pidfd, which works for
any process; reaping is the subreaper's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import any_pb2

from cri_async.ttrpc import Client, reachable, socket_path
from cri_async.ttrpc.errors import TTRPCError

from .bootstrap import (
    Bootstrap,
    ShimCommandError,
    run_delete,
    run_start,
    shim_argv,
    shim_env,
)
from .records import ExitInfo
from .task import ShimClient

__all__ = ["Shim", "ShimGone", "ShimManager"]

log = logging.getLogger(__name__)

BOOTSTRAP_FILE = "bootstrap.json"
ADDRESS_FILE = "address"
BINARY_FILE = "shim-binary-path"
LOG_FIFO = "log"


class ShimGone(ConnectionError):
    """The shim of a task cannot be reached (it exited or its socket is gone)."""


class _LogLines(asyncio.Protocol):
    """Copies a shim's log FIFO to our log, a line at a time."""

    def __init__(self, id: str) -> None:
        self._id = id
        self._buf = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        *lines, self._buf = (self._buf + data).split(b"\n")
        for line in lines:
            log.debug("shim %s: %s", self._id, line.decode(errors="replace"))
        if len(self._buf) > 65536:
            log.debug("shim %s: %s", self._id, self._buf.decode(errors="replace"))
            self._buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf:
            log.debug("shim %s: %s", self._id, self._buf.decode(errors="replace"))
        if not self.done.done():
            self.done.set_result(None)


async def _open_log(path: Path, id: str) -> asyncio.ReadTransport:
    """Open (making it if needed) the shim's log FIFO for reading, without blocking."""
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    pipe = os.fdopen(fd, "rb", buffering=0)
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.connect_read_pipe(lambda: _LogLines(id), pipe)
    except BaseException:
        pipe.close()
        raise
    return transport


async def _exited(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` exits (or is gone) within ``timeout`` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        log.warning("shim pid %d did not exit within %gs after Shutdown; killed it", pid, timeout)
        return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@dataclass
class _Connection:
    client: ShimClient
    shim_pid: int
    users: set[str] = field(default_factory=set)


class Shim:
    """One task's shim (possibly shared with the other tasks of its pod)."""

    def __init__(
        self,
        manager: ShimManager,
        id: str,
        bundle: Path,
        binary: str,
        bootstrap: Bootstrap,
        conn: _Connection,
        log_transport: asyncio.ReadTransport,
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.binary = binary
        self.bootstrap = bootstrap
        self._manager = manager
        self._conn = conn
        self._log = log_transport
        self._released = False

    @property
    def client(self) -> ShimClient:
        """The task API; calls name this task by ``shim.id``."""
        return self._conn.client

    @property
    def address(self) -> str:
        return self.bootstrap.address

    @property
    def shim_pid(self) -> int:
        return self._conn.shim_pid

    @property
    def closed(self) -> bool:
        """True once the connection is gone (the shim exited, or we closed it)."""
        return self._conn.client.closed

    async def wait_closed(self) -> None:
        await self._conn.client.conn.wait_closed()

    async def shutdown(self, *, timeout: float | None = None) -> None:
        """Shutdown after the task was deleted; waits for the shim to exit when it does
        (see the module docstring). Removes the bundle's log FIFO."""
        timeout = self._manager.exit_timeout if timeout is None else timeout
        client = self._conn.client
        try:
            if not client.closed:
                await client.shutdown(self.id)
        except BaseException:  # let go of our side all the same
            if self._let_go():
                await client.close()
            raise
        if not self._let_go():
            return
        try:
            async with asyncio.timeout(timeout):
                await client.conn.wait_closed()
        except TimeoutError:
            log.info("shim %s (pid %d) still serves other tasks", self.id, self.shim_pid)
            await client.close()
            return
        await _exited(self.shim_pid, timeout)

    async def close(self) -> None:
        """Let go of the shim without stopping it (our own shutdown; ``load`` later)."""
        if self._manager._release(self):
            await self._conn.client.close()
        self._log.close()

    def _let_go(self) -> bool:
        """After Shutdown: forget this task's use of the connection, stop reading and
        remove the log FIFO. True if no other task of ours uses the connection."""
        last = self._manager._release(self)
        self._log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.bundle / LOG_FIFO)
        return last


class ShimManager:
    """Starts and reconnects shims for one namespace, publishing to one events endpoint.

    ``events_address`` is our ttrpc events socket (TTRPC_ADDRESS); it also serves as the
    ``-address`` the shim hashes into its socket name. ``publish_binary`` is passed as
    ``-publish-binary`` (no shim served here execs it; see the events module).
    """

    def __init__(
        self,
        *,
        namespace: str,
        events_address: str,
        publish_binary: str = "/bin/false",
        call_timeout: float = 30.0,
        command_timeout: float = 30.0,
        exit_timeout: float = 10.0,
        debug: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.events_address = events_address
        self.publish_binary = publish_binary
        self.call_timeout = call_timeout
        self.command_timeout = command_timeout
        self.exit_timeout = exit_timeout
        self.debug = debug
        self._env = shim_env(
            os.environ if env is None else env,
            ttrpc_address=events_address,
            grpc_address=events_address,
            namespace=namespace,
        )
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Future[_Connection]] = {}

    def argv(self, binary: str, id: str, action: str, *, bundle: str = "") -> list[str]:
        return shim_argv(
            binary,
            namespace=self.namespace,
            address=self.events_address,
            publish_binary=self.publish_binary,
            id=id,
            action=action,
            bundle=bundle,
            debug=self.debug,
        )

    async def start(
        self, id: str, bundle: Path, binary: str, *, options: any_pb2.Any | None = None
    ) -> Shim:
        """Start (or join) the shim for task ``id`` whose OCI bundle is ``bundle``
        (named by the task id). ``options`` go to ``start`` on stdin."""
        if bundle.name != id:
            raise ValueError(f"bundle {bundle} must be named by its task id {id!r}")
        log_transport = await _open_log(bundle / LOG_FIFO, id)
        started = False
        try:
            argv = self.argv(binary, id, "start")
            stdin = options.SerializeToString() if options is not None else b""
            boot = await run_start(
                argv, bundle=str(bundle), env=self._env, options=stdin, timeout=self.command_timeout
            )
            started = True
            (bundle / BOOTSTRAP_FILE).write_text(boot.to_json())
            (bundle / BINARY_FILE).write_text(binary)
            conn = await self._attach(boot, id)
        except BaseException:
            log_transport.close()
            if started:
                await asyncio.shield(self._cleanup_failed_start(id, bundle, binary))
            for name in (LOG_FIFO, BOOTSTRAP_FILE, BINARY_FILE):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bundle / name)
            raise
        return Shim(self, id, bundle, binary, boot, conn, log_transport)

    async def load(self, id: str, bundle: Path) -> Shim:
        """Reconnect to the running shim of task ``id`` from what its bundle records.

        Raises :class:`ShimGone` when the shim does not answer, ``FileNotFoundError`` when
        the bundle records no shim.
        """
        boot = self._read_bootstrap(bundle)
        binary = (bundle / BINARY_FILE).read_text().strip()
        log_transport = await _open_log(bundle / LOG_FIFO, id)
        try:
            conn = await self._attach(boot, id)
        except BaseException:
            log_transport.close()
            raise
        return Shim(self, id, bundle, binary, boot, conn, log_transport)

    async def delete_dead(self, id: str, bundle: Path, binary: str | None = None) -> ExitInfo:
        """``shim delete`` for a task whose shim is gone: the OCI runtime's delete and the
        rootfs unmount. Returns the exit the shim reports for the task."""
        if binary is None:
            binary = (bundle / BINARY_FILE).read_text().strip()
        argv = self.argv(binary, id, "delete", bundle=str(bundle))
        exit = await run_delete(
            argv, bundle=str(bundle), env=self._env, timeout=self.command_timeout
        )
        await self._remove_stale_socket(bundle)
        return exit

    async def close(self) -> None:
        """Drop every connection; the shims keep running (``load`` them later)."""
        conns, self._conns = self._conns, {}
        for c in conns.values():
            await c.client.close()

    async def _remove_stale_socket(self, bundle: Path) -> None:
        """A killed shim leaves its socket file (neither containerd nor ``shim delete``
        removes it); remove it when nothing listens there any more."""
        try:
            boot = self._read_bootstrap(bundle)
            path = socket_path(boot.address)
        except (FileNotFoundError, ValueError):
            return
        if path.startswith("/") and not await reachable(boot.address):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _read_bootstrap(self, bundle: Path) -> Bootstrap:
        try:
            params = json.loads((bundle / BOOTSTRAP_FILE).read_text())
            return Bootstrap(params["address"], int(params["version"]), params["protocol"])
        except FileNotFoundError:
            return Bootstrap((bundle / ADDRESS_FILE).read_text().strip())

    async def _attach(self, boot: Bootstrap, id: str) -> _Connection:
        """The shared connection to ``boot.address`` with ``id`` added to its users."""
        conn = self._conns.get(boot.address)
        if conn is None or conn.client.closed:
            pending = self._connecting.get(boot.address)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._connecting[boot.address] = pending
                try:
                    conn = await self._connect(boot, id)
                except BaseException as e:
                    pending.set_exception(e)
                    pending.exception()  # retrieved: the awaiting starts re-raise it
                    raise
                finally:
                    del self._connecting[boot.address]
                self._conns[boot.address] = conn
                pending.set_result(conn)
            else:
                conn = await asyncio.shield(pending)
        conn.users.add(id)
        return conn

    async def _connect(self, boot: Bootstrap, id: str) -> _Connection:
        try:
            ttrpc = await Client.connect(boot.address, timeout=self.call_timeout)
        except (OSError, TimeoutError) as e:
            raise ShimGone(f"shim of {id} at {boot.address} does not answer: {e}") from e
        client = ShimClient(
            ttrpc, namespace=self.namespace, version=boot.version, timeout=self.call_timeout
        )
        try:
            info = await client.connect(id)
        except BaseException as e:
            await ttrpc.close()
            if isinstance(e, TTRPCError):
                raise ShimGone(f"shim of {id} at {boot.address}: {e}") from e
            raise
        return _Connection(client, info.shim_pid)

    def _release(self, shim: Shim) -> bool:
        """Forget ``shim``'s use of its connection; True if it was the last user."""
        if shim._released:
            return False
        shim._released = True
        conn = shim._conn
        conn.users.discard(shim.id)
        if conn.users:
            return False
        if self._conns.get(shim.address) is conn:
            del self._conns[shim.address]
        return True

    async def _cleanup_failed_start(self, id: str, bundle: Path, binary: str) -> None:
        try:
            await self.delete_dead(id, bundle, binary)
        except ShimCommandError as e:
            log.warning("cleanup after failed shim start of %s: %s", id, e)
