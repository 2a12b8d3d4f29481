"""Shim events: envelope decoding and the TTRPC_ADDRESS endpoint over a real socket."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from cri_async.api.containerd.events import task_pb2 as ev
from cri_async.api.containerd.events.ttrpc.v1 import events_pb2
from cri_async.backends.shimv2.events import (
    EVENTS_SERVICE,
    Event,
    EventServer,
    TaskCheckpointed,
    TaskCreate,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskExit,
    TaskOOM,
    TaskPaused,
    TaskResumed,
    TaskStart,
    UnknownEvent,
    decode_envelope,
)
from cri_async.backends.shimv2.records import Mount, Stdio
from cri_async.ttrpc import Client

T = 1_700_000_000_000_000_123


def envelope(
    msg: Message, topic: str = "/tasks/x", namespace: str = "k8s.io"
) -> events_pb2.Envelope:
    env = events_pb2.Envelope(
        namespace=namespace,
        topic=topic,
        event=any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString()),
    )
    env.timestamp.FromNanoseconds(T)
    return env


def _exit(**kw: object) -> ev.TaskExit:
    e = ev.TaskExit(**kw)  # type: ignore[arg-type]
    e.exited_at.FromNanoseconds(T)
    return e


@pytest.mark.parametrize(
    ("msg", "want"),
    [
        (_exit(container_id="c", id="c", pid=5, exit_status=137), TaskExit("c", "", 5, 137, T)),
        (_exit(container_id="c", id="x1", pid=6, exit_status=0), TaskExit("c", "x1", 6, 0, T)),
        (ev.TaskOOM(container_id="c"), TaskOOM("c")),
        (ev.TaskStart(container_id="c", pid=5), TaskStart("c", 5)),
        (ev.TaskDelete(container_id="c", pid=5, exit_status=1), TaskDelete("c", "", 5, 1, None)),
        (ev.TaskExecAdded(container_id="c", exec_id="x"), TaskExecAdded("c", "x")),
        (ev.TaskExecStarted(container_id="c", exec_id="x", pid=8), TaskExecStarted("c", "x", 8)),
        (ev.TaskPaused(container_id="c"), TaskPaused("c")),
        (ev.TaskResumed(container_id="c"), TaskResumed("c")),
        (ev.TaskCheckpointed(container_id="c", checkpoint="/cp"), TaskCheckpointed("c", "/cp")),
        (
            ev.TaskCreate(
                container_id="c",
                bundle="/b",
                pid=5,
                io=ev.TaskIO(stdout="/o", stderr="/e"),
                rootfs=[{"type": "bind", "source": "/r", "options": ["rbind", "ro"]}],
            ),
            TaskCreate(
                "c", "/b", 5, Stdio("", "/o", "/e"), (Mount("bind", "/r", ("rbind", "ro")),)
            ),
        ),
    ],
)
def test_every_task_event_decodes(msg: Message, want: object) -> None:
    got = decode_envelope(envelope(msg, "/tasks/exit"))
    assert got == Event(T, "k8s.io", "/tasks/exit", want)  # type: ignore[arg-type]


def test_unknown_and_corrupt_events_are_passed_through() -> None:
    env = events_pb2.Envelope(topic="/x", event=any_pb2.Any(type_url="vendor.Thing", value=b"1"))
    assert decode_envelope(env).event == UnknownEvent("vendor.Thing", b"1")
    bad = events_pb2.Envelope(
        event=any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff\xff")
    )
    assert decode_envelope(bad).event == UnknownEvent("containerd.events.TaskExit", b"\xff\xff")
    assert decode_envelope(bad).timestamp_ns is None


@pytest.fixture
def sock() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="ev", dir="/tmp")
    yield f"{d}/events.sock"
    shutil.rmtree(d)


@pytest_asyncio.fixture
async def server(sock: str) -> AsyncIterator[EventServer]:
    async with EventServer(sock) as s:
        yield s


async def _forward(path: str, *envs: events_pb2.Envelope) -> None:
    async with await Client.connect(path) as c:
        for env in envs:
            await c.call(
                EVENTS_SERVICE,
                "Forward",
                events_pb2.ForwardRequest(envelope=env),
                empty_pb2.Empty,
                metadata=[("containerd-namespace-ttrpc", env.namespace)],
            )


async def test_forwarded_events_reach_subscribers_in_order(server: EventServer) -> None:
    every = server.subscribe()
    mine = server.subscribe("k8s.io")
    await _forward(
        server.path,
        envelope(ev.TaskStart(container_id="a", pid=1), "/tasks/start"),
        envelope(ev.TaskOOM(container_id="b"), "/tasks/oom", namespace="other"),
        envelope(_exit(container_id="a", id="a", pid=1, exit_status=9), "/tasks/exit"),
    )
    assert [(await every.get()).event for _ in range(3)] == [
        TaskStart("a", 1),
        TaskOOM("b"),
        TaskExit("a", "", 1, 9, T),
    ]
    assert [(await mine.get()).topic for _ in range(2)] == ["/tasks/start", "/tasks/exit"]


async def test_a_corrupt_event_is_still_accepted(server: EventServer) -> None:
    sub = server.subscribe()
    bad = events_pb2.Envelope(
        event=any_pb2.Any(type_url="containerd.events.TaskOOM", value=b"\xff")
    )
    await _forward(server.path, bad)  # no error: the shim must not resend it
    assert isinstance((await sub.get()).event, UnknownEvent)


async def test_subscriptions_end_when_closed_or_when_the_server_closes(sock: str) -> None:
    server = EventServer(sock)
    await server.start()
    closed = server.subscribe()
    closed.close()
    with pytest.raises(EOFError):
        await closed.get()
    live = server.subscribe()
    await _forward(sock, envelope(ev.TaskPaused(container_id="p")))
    await server.close()
    got = [e.event async for e in live]
    assert got == [TaskPaused("p")]
