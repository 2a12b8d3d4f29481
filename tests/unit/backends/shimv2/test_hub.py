"""EventHub: the one events endpoint of all shim handlers, started on first use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from cri_async.api.containerd.events import task_pb2 as ev
from cri_async.api.containerd.events.ttrpc.v1 import events_pb2
from cri_async.backends.shimv2.events import EVENTS_SERVICE, TaskOOM
from cri_async.backends.shimv2.hub import EventHub
from cri_async.ttrpc import Client


async def _forward(address: str, namespace: str, container_id: str) -> None:
    env = events_pb2.Envelope(
        namespace=namespace,
        topic="/tasks/oom",
        event=any_pb2.Any(
            type_url="containerd.events.TaskOOM",
            value=ev.TaskOOM(container_id=container_id).SerializeToString(),
        ),
    )
    client = await Client.connect(address, timeout=5)
    try:
        await client.call(
            EVENTS_SERVICE,
            "Forward",
            events_pb2.ForwardRequest(envelope=env),
            empty_pb2.Empty,
            timeout=5,
        )
    finally:
        await client.close()


async def test_started_once_per_namespace_and_closed_once(tmp_path: Path) -> None:
    hub = EventHub(tmp_path / "shimv2" / "events.sock")
    mine, other = hub.subscribe("a"), hub.subscribe("b")  # before the endpoint listens
    await hub.start()
    await hub.start()  # a second handler: same endpoint
    await _forward(hub.address, "a", "c1")
    await _forward(hub.address, "b", "c2")
    got = await mine.get()
    assert (got.namespace, got.event) == ("a", TaskOOM("c1"))
    assert (await other.get()).event == TaskOOM("c2")
    await hub.close()
    await hub.close()
    assert not os.path.exists(hub.address)
    with pytest.raises(EOFError):
        await mine.get()
    with pytest.raises(RuntimeError, match="closed"):
        await hub.start()
