"""The tasks of one shim v2 handler: creating a container's task, loading it again from its
bundle after a restart, its exit, and taking it down; plus the events that concern them.

Exits: one ``Wait`` per running task is the authoritative exit. The shim's TaskExit event
(init only) follows within a millisecond and is awaited briefly, because the shim publishes
a container's TaskOOM before it: TaskOOM is the only source of ``OOMKilled``. A shim that
is gone (its connection closed, or it does not answer a reconnect) gets ``shim delete``
(the OCI runtime's delete, the rootfs unmount) and the container exits 137.

Taking a task down (RemoveContainer, a failed create, orphans): SIGKILL and Wait (bounded)
if it still runs, Delete, the shim's Shutdown (ignored by a shim that still serves other
tasks of the pod), then our FIFO ends and the FIFOs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
import time
from pathlib import Path

from cri_async.backends.bundles import BundleLayout
from cri_async.core.errors import AlreadyExists, FailedPrecondition, Internal, NotFound
from cri_async.core.model import Container
from cri_async.core.ports import ExitStatus, ProcessStatus
from cri_async.logs.logfile import LogFile
from cri_async.stats.cgroupstats import CgroupStats
from cri_async.ttrpc.errors import (
    AlreadyExistsError,
    ConnectionClosed,
    NotFoundError,
    TTRPCError,
    UnknownError,
)

from .bootstrap import ShimCommandError, ShimNotFound, resolve_binary
from .events import TaskExit, TaskOOM
from .hub import EventHub
from .metrics import UnsupportedMetrics
from .records import TaskStatus
from .settings import ShimSettings
from .shim import Shim, ShimGone, ShimManager
from .stdio import ProcessIO
from .task import ShimClient
from .tasks import IO_DIR, Task, TaskOutput

__all__ = ["TaskSet", "shim_error"]

log = logging.getLogger(__name__)

EXIT_EVENT_WAIT = 1.0
"""Seconds to wait after Wait's answer for the TaskExit event (a TaskOOM precedes it)."""
DRAIN_TIMEOUT = 2.0
"""Seconds to wait for an exited process's output to reach end of file."""
STATS_TIMEOUT = 5.0


def lost(message: str) -> ExitStatus:
    return ExitStatus(255, time.time_ns(), "Unknown", message)


def shim_error(e: TTRPCError, what: str) -> Exception:
    """A shim's status as the core's error: NOT_FOUND and ALREADY_EXISTS keep theirs; the
    OCI runtime refusing the container (UNKNOWN, e.g. no such executable) is the
    FAILED_PRECONDITION the runc backend answers for the same failure; the rest INTERNAL."""
    if isinstance(e, NotFoundError):
        return NotFound(f"{what}: {e.message}")
    if isinstance(e, AlreadyExistsError):
        return AlreadyExists(f"{what}: {e.message}")
    if isinstance(e, UnknownError):
        return FailedPrecondition(f"{what}: {e.message}")
    return Internal(f"{what}: {e.message}")


class TaskSet:
    """One handler's tasks, their shims (through a ShimManager) and their events."""

    def __init__(
        self, handler: str, settings: ShimSettings, hub: EventHub, layout: BundleLayout
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.hub = hub
        self.layout = layout
        self.manager = ShimManager(
            namespace=settings.namespace,
            events_address=hub.address,
            call_timeout=settings.timeout,
            command_timeout=settings.timeout,
        )
        self._tasks: dict[str, Task] = {}
        self._loading: dict[str, asyncio.Future[Task]] = {}
        self._oom: set[str] = set()
        self._exited: dict[str, asyncio.Event] = {}
        self._sub = hub.subscribe(settings.namespace)
        self._events: asyncio.Task[None] | None = None

    # -- shims -------------------------------------------------------------------------
    async def listen(self) -> None:
        """Before a shim is started or loaded: the events endpoint listens and its events
        of this handler's namespace are followed."""
        await self.hub.start()
        if self._events is None or self._events.done():
            self._events = asyncio.create_task(self._follow(), name=f"shim-events-{self.handler}")

    async def _follow(self) -> None:
        async for event in self._sub:
            e = event.event
            if isinstance(e, TaskOOM) and e.container_id in self._tasks:
                self._oom.add(e.container_id)
            elif isinstance(e, TaskExit) and not e.exec_id and e.container_id in self._tasks:
                self._exited.setdefault(e.container_id, asyncio.Event()).set()

    async def start_shim(self, cid: str, bundle: Path) -> Shim:
        await self.listen()
        try:
            binary = resolve_binary(self.settings.runtime_type)
        except (ShimNotFound, ValueError) as e:
            raise FailedPrecondition(str(e)) from None
        try:
            return await self.manager.start(cid, bundle, binary, options=self.settings.options)
        except ShimCommandError as e:
            raise Internal(f"the shim of {cid} did not start: {e}") from None

    async def load_shim(self, cid: str, bundle: Path) -> Shim | None:
        """The shim of a task we keep no FIFOs of (infra tasks, orphans); None if no shim
        is recorded, and after ``shim delete`` if it is gone."""
        await self.listen()
        try:
            return await self.manager.load(cid, bundle)
        except FileNotFoundError:
            return None
        except ShimGone:
            await self.delete_dead(cid, bundle)
            return None

    async def delete_dead(self, cid: str, bundle: Path) -> None:
        try:
            await self.manager.delete_dead(cid, bundle)
        except (ShimCommandError, FileNotFoundError) as e:
            log.warning("shim delete of %s: %s", cid, e)

    async def shutdown(self, shim: Shim) -> None:
        try:
            await shim.shutdown()
        except (TTRPCError, OSError) as e:
            log.info("shim shutdown for %s: %s", shim.id, e)

    # -- a container's task ------------------------------------------------------------
    async def create(self, container: Container, bundle: Path) -> tuple[Task, int]:
        """Start (or join) the shim, open the stdio FIFOs and the CRI log, Create. Leaves
        nothing running if it raises."""
        cid = container.id
        cfg = container.config
        shim = await self.start_shim(cid, bundle)
        io: ProcessIO | None = None
        log_file: LogFile | None = None
        try:
            io = ProcessIO.open(bundle / IO_DIR, stdin=cfg.stdin, terminal=cfg.tty)
            try:
                log_file = LogFile(container.log_path)
            except OSError as e:
                raise FailedPrecondition(
                    f"cannot open log file {container.log_path}: {e.strerror}"
                ) from None
            task = Task(cid, bundle, shim, io, TaskOutput(log_file))
            await io.start(task.output.write)
            pid = await shim.client.create(
                cid, str(bundle), stdio=io.stdio, options=self.settings.options
            )
        except BaseException as e:
            if io is not None:
                io.close()
            if log_file is not None:
                log_file.close()
            with contextlib.suppress(TTRPCError):
                await asyncio.shield(shim.client.delete(cid))
            await asyncio.shield(self.shutdown(shim))
            if isinstance(e, TTRPCError):
                raise shim_error(e, f"failed to create container {cid}") from None
            raise
        self._tasks[cid] = task
        return task, pid

    async def get(self, container: Container) -> Task:
        """The container's task, loaded from its bundle once if need be (concurrent
        callers share the load). Raises FileNotFoundError (nothing recorded) or ShimGone."""
        cid = container.id
        task = self._tasks.get(cid)
        if task is not None:
            return task
        pending = self._loading.get(cid)
        if pending is None:
            pending = asyncio.ensure_future(self._load(container))
            self._loading[cid] = pending
            pending.add_done_callback(lambda _: self._loading.pop(cid, None))
        return await asyncio.shield(pending)

    async def running(self, container: Container) -> Task:
        """The task of a container whose shim answers; FailedPrecondition otherwise."""
        try:
            task = await self.get(container)
        except (ShimGone, FileNotFoundError) as e:
            raise FailedPrecondition(f"container {container.id} is not running: {e}") from None
        if task.gone:
            raise FailedPrecondition(f"container {container.id} is not running (shim gone)")
        return task

    async def _load(self, container: Container) -> Task:
        cid = container.id
        bundle = self.layout.bundle(cid)
        await self.listen()
        shim = await self.manager.load(cid, bundle)
        cfg = container.config
        try:
            io = ProcessIO.open(bundle / IO_DIR, stdin=cfg.stdin, terminal=cfg.tty, create=False)
        except BaseException:
            await shim.close()
            raise
        try:
            log_file = LogFile(container.log_path)
        except OSError as e:
            log.warning("container %s: cannot reopen log %s: %s", cid, container.log_path, e)
            log_file = LogFile("")
        task = Task(cid, bundle, shim, io, TaskOutput(log_file))
        await io.start(task.output.write)
        self._tasks[cid] = task
        return task

    async def wait(self, container: Container) -> ExitStatus:
        """The container's exit (see the module's notes)."""
        cid = container.id
        try:
            task = await self.get(container)
        except ShimGone:
            return await self.shim_lost(container, None)
        except FileNotFoundError:
            return lost("the container's bundle is gone")
        try:
            info = await task.client.wait(cid)
        except ConnectionClosed:
            return await self.shim_lost(container, task)
        except NotFoundError:
            return lost("the container's task is unknown to its shim")
        exited = self._exited.setdefault(cid, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), EXIT_EVENT_WAIT)
        await task.drain(DRAIN_TIMEOUT)
        reason = "OOMKilled" if cid in self._oom else ""
        return ExitStatus(info.exit_status, info.exited_at_ns or time.time_ns(), reason)

    async def status(self, container: Container) -> ProcessStatus:
        """After our restart: still running, or how it ended."""
        try:
            task = await self.get(container)
        except FileNotFoundError:
            return ProcessStatus(container.pid, lost("container state lost (host reboot?)"))
        except ShimGone:
            return ProcessStatus(container.pid, await self.shim_lost(container, None))
        try:
            state = await task.client.state(container.id)
        except ConnectionClosed:
            return ProcessStatus(container.pid, await self.shim_lost(container, task))
        except NotFoundError:
            return ProcessStatus(container.pid, lost("the container's task is unknown to its shim"))
        if state.status is TaskStatus.CREATED:
            return ProcessStatus(state.pid, None, started=False)
        if state.status is TaskStatus.STOPPED:
            await task.drain(DRAIN_TIMEOUT)
            finished = state.exited_at_ns or time.time_ns()
            return ProcessStatus(state.pid, ExitStatus(state.exit_status, finished))
        return ProcessStatus(state.pid, None)

    async def shim_lost(self, container: Container, task: Task | None) -> ExitStatus:
        """The shim went away under a task: clean it up with ``shim delete``; exit 137."""
        cid = container.id
        log.warning("container %s: its shim is gone; cleaning up with shim delete", cid)
        if task is not None:
            task.gone = True
            task.output.end()
        await self.delete_dead(cid, self.layout.bundle(cid))
        return ExitStatus(137, time.time_ns(), "Error", "the container's shim exited")

    async def remove(self, container: Container) -> None:
        """Take the container's task down (see the module's notes). Idempotent; the
        bundle is the caller's."""
        try:
            await self._remove(container)
        finally:
            self._oom.discard(container.id)
            self._exited.pop(container.id, None)

    async def _remove(self, container: Container) -> None:
        cid = container.id
        bundle = self.layout.bundle(cid)
        try:
            task = await self.get(container)
        except FileNotFoundError:  # no shim recorded, or our FIFOs are gone
            await self.remove_orphan(cid, bundle)
            return
        except ShimGone:
            await self.delete_dead(cid, bundle)
            return
        if not task.gone:
            try:
                await self.stop(task.client, cid)
                with contextlib.suppress(NotFoundError):
                    await task.client.delete(cid)
            except ConnectionClosed:
                await self.delete_dead(cid, bundle)
            except TTRPCError as e:
                raise Internal(f"cannot delete container {cid}: {e.message}") from None
        self._tasks.pop(cid, None)
        await self.shutdown(task.shim)
        task.release()
        task.io.remove()

    async def remove_orphan(self, cid: str, bundle: Path) -> None:
        """Take down a task we hold nothing of (no record, or no FIFOs)."""
        shim = await self.load_shim(cid, bundle)
        if shim is None:
            return
        try:
            await self.stop(shim.client, cid)
            with contextlib.suppress(NotFoundError):
                await shim.client.delete(cid)
        except ConnectionClosed:
            await self.delete_dead(cid, bundle)
        finally:
            await self.shutdown(shim)

    async def stop(self, client: ShimClient, cid: str) -> None:
        """SIGKILL a task that still runs and wait (bounded) for it. A created one too:
        its runtime's init holds the stdio pipes, and the shim's Delete waits 2 s for
        them to close."""
        try:
            state = await client.state(cid)
        except NotFoundError:
            return
        if state.status is TaskStatus.STOPPED:
            return
        with contextlib.suppress(NotFoundError):
            await client.kill(cid, signals.SIGKILL, all=True)
        try:
            async with asyncio.timeout(self.settings.timeout):
                await client.wait(cid)
        except TimeoutError:
            log.warning("task %s did not exit %gs after SIGKILL", cid, self.settings.timeout)

    # -- stats (shim_stats) --------------------------------------------------------------
    def reads_stats(self, container_id: str) -> bool:
        return self.settings.shim_stats and container_id in self._tasks

    async def stats(self, container_id: str) -> CgroupStats | None:
        task = self._tasks.get(container_id)
        if task is None or task.gone:
            return None
        try:
            return await asyncio.wait_for(task.client.stats(container_id), STATS_TIMEOUT)
        except (TTRPCError, UnsupportedMetrics, TimeoutError) as e:
            log.debug("stats of %s from its shim: %s", container_id, e)
            return None

    # -- shutdown ------------------------------------------------------------------------
    async def close(self) -> None:
        """Let go of every task (the shims keep running; a restart loads them again)."""
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            task.release()
            await task.shim.close()
        await self.manager.close()
