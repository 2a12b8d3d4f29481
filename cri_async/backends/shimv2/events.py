"""Task events from shims: the ttrpc endpoint they publish to, and typed event records.

containerd-shim-runc-v2 (containerd 1.6), Kata 2.x/3.x, gVisor's shim and runwasi shims
publish by calling ``containerd.services.events.ttrpc.v1.Events/Forward`` on the unix
socket named by the ``TTRPC_ADDRESS`` environment variable they were started with; the
``-publish-binary`` exec path is older shims' (containerd-shim v1) and is not served.
:class:`EventServer` serves that method and fans each event out to subscribers.

Delivery is at most once: a shim retries a failed Forward a few times (runc's shim: 5
tries, 1 s more apart each) and then drops the event, and events sent while no server
listens (our restart) may be lost. TaskExit and TaskOOM are prompt hints; ``Wait`` on the
task API stays the authoritative exit source.

The Forward handler never fails: an event of a type this module does not know, or one that
does not decode, arrives as :class:`UnknownEvent` rather than as an error that would make
the shim resend it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from cri_async.api.containerd.events import task_pb2 as ev
from cri_async.api.containerd.events.ttrpc.v1 import events_pb2
from cri_async.ttrpc import CallContext, Server

from .records import Mount, Stdio, timestamp_ns

__all__ = [
    "EVENTS_SERVICE",
    "Event",
    "EventServer",
    "Subscription",
    "TaskCheckpointed",
    "TaskCreate",
    "TaskDelete",
    "TaskEvent",
    "TaskExecAdded",
    "TaskExecStarted",
    "TaskExit",
    "TaskOOM",
    "TaskPaused",
    "TaskResumed",
    "TaskStart",
    "UnknownEvent",
    "decode_envelope",
]

log = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"


@dataclass(frozen=True, slots=True)
class TaskCreate:
    container_id: str
    bundle: str
    pid: int
    stdio: Stdio
    rootfs: tuple[Mount, ...] = ()
    checkpoint: str = ""


@dataclass(frozen=True, slots=True)
class TaskStart:
    container_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class TaskExit:
    """A process exited. ``exec_id`` is "" for the task's init process (runc shims name it
    by the container id on the wire; that is normalised here)."""

    container_id: str
    exec_id: str
    pid: int
    exit_status: int
    exited_at_ns: int | None


@dataclass(frozen=True, slots=True)
class TaskDelete:
    container_id: str
    exec_id: str
    pid: int
    exit_status: int
    exited_at_ns: int | None


@dataclass(frozen=True, slots=True)
class TaskOOM:
    container_id: str


@dataclass(frozen=True, slots=True)
class TaskExecAdded:
    container_id: str
    exec_id: str


@dataclass(frozen=True, slots=True)
class TaskExecStarted:
    container_id: str
    exec_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class TaskPaused:
    container_id: str


@dataclass(frozen=True, slots=True)
class TaskResumed:
    container_id: str


@dataclass(frozen=True, slots=True)
class TaskCheckpointed:
    container_id: str
    checkpoint: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event this module does not decode: its Any, as sent."""

    type_url: str
    value: bytes


TaskEvent = (
    TaskCreate
    | TaskStart
    | TaskExit
    | TaskDelete
    | TaskOOM
    | TaskExecAdded
    | TaskExecStarted
    | TaskPaused
    | TaskResumed
    | TaskCheckpointed
    | UnknownEvent
)


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: when (the shim's clock), which namespace, topic and payload."""

    timestamp_ns: int | None
    namespace: str
    topic: str
    event: TaskEvent


def _init_is_blank(container_id: str, exec_id: str) -> str:
    return "" if exec_id == container_id else exec_id


def _decode(type_url: str, value: bytes) -> TaskEvent:
    name = type_url.rsplit("/", 1)[-1]
    if name == "containerd.events.TaskExit":
        e = ev.TaskExit.FromString(value)
        return TaskExit(
            e.container_id,
            _init_is_blank(e.container_id, e.id),
            e.pid,
            e.exit_status,
            timestamp_ns(e.exited_at),
        )
    if name == "containerd.events.TaskOOM":
        return TaskOOM(ev.TaskOOM.FromString(value).container_id)
    if name == "containerd.events.TaskCreate":
        c = ev.TaskCreate.FromString(value)
        return TaskCreate(
            c.container_id,
            c.bundle,
            c.pid,
            Stdio(c.io.stdin, c.io.stdout, c.io.stderr, c.io.terminal),
            tuple(Mount(m.type, m.source, tuple(m.options), m.target) for m in c.rootfs),
            c.checkpoint,
        )
    if name == "containerd.events.TaskStart":
        s = ev.TaskStart.FromString(value)
        return TaskStart(s.container_id, s.pid)
    if name == "containerd.events.TaskDelete":
        d = ev.TaskDelete.FromString(value)
        return TaskDelete(
            d.container_id,
            _init_is_blank(d.container_id, d.id),
            d.pid,
            d.exit_status,
            timestamp_ns(d.exited_at),
        )
    if name == "containerd.events.TaskExecAdded":
        a = ev.TaskExecAdded.FromString(value)
        return TaskExecAdded(a.container_id, a.exec_id)
    if name == "containerd.events.TaskExecStarted":
        x = ev.TaskExecStarted.FromString(value)
        return TaskExecStarted(x.container_id, x.exec_id, x.pid)
    if name == "containerd.events.TaskPaused":
        return TaskPaused(ev.TaskPaused.FromString(value).container_id)
    if name == "containerd.events.TaskResumed":
        return TaskResumed(ev.TaskResumed.FromString(value).container_id)
    if name == "containerd.events.TaskCheckpointed":
        k = ev.TaskCheckpointed.FromString(value)
        return TaskCheckpointed(k.container_id, k.checkpoint)
    return UnknownEvent(type_url, value)


def decode_envelope(env: events_pb2.Envelope) -> Event:
    """Pure: an Envelope as a typed :class:`Event` (never raises for bad payloads)."""
    try:
        payload = _decode(env.event.type_url, env.event.value)
    except DecodeError:
        payload = UnknownEvent(env.event.type_url, env.event.value)
    return Event(timestamp_ns(env.timestamp), env.namespace, env.topic, payload)


class Subscription:
    """Events in arrival order until closed. Iterate with ``async for`` or call ``get``."""

    def __init__(self, hub: EventServer, namespace: str | None) -> None:
        self._hub = hub
        self.namespace = namespace
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._closed = False

    def _put(self, event: Event | None) -> None:
        if not self._closed:
            self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event; raises ``EOFError`` once the subscription (or server) closed."""
        item = await self._queue.get()
        if item is None:
            self._closed = True
            raise EOFError("event subscription closed")
        return item

    def close(self) -> None:
        self._hub._subs.discard(self)
        self._put(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.get()
            except EOFError:
                return


class EventServer:
    """Serve the events endpoint on ``path`` (give shims ``TTRPC_ADDRESS=<path>``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server = Server(handler_timeout=5.0)
        self._server.register(EVENTS_SERVICE, "Forward", events_pb2.ForwardRequest, self._forward)
        self._subs: set[Subscription] = set()

    async def start(self) -> None:
        await self._server.start(self.path)

    async def close(self) -> None:
        await self._server.close()
        for sub in list(self._subs):
            sub.close()

    async def __aenter__(self) -> EventServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def subscribe(self, namespace: str | None = None) -> Subscription:
        """Receive every event published from now on (of ``namespace`` only, if given)."""
        sub = Subscription(self, namespace)
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every matching subscriber (what Forward does)."""
        for sub in self._subs:
            if sub.namespace is None or sub.namespace == event.namespace:
                sub._put(event)

    async def _forward(self, req: events_pb2.ForwardRequest, ctx: CallContext) -> empty_pb2.Empty:
        event = decode_envelope(req.envelope)
        log.debug("shim event %s %s: %s", event.namespace, event.topic, event.event)
        self.publish(event)
        return empty_pb2.Empty()
