"""The core managers over the fake backend: a Runtime on a real state database, an
instrumented FakeBackend (calls recorded, creates that can be held or made to fail), and
an event collector."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio

from cri_async.backends.fake.backend import FakeBackend
from cri_async.core.context import Limits
from cri_async.core.events import ContainerEvent, EventType
from cri_async.core.model import (
    Container,
    ContainerConfig,
    ContainerMetadata,
    Image,
    ImageSpec,
    PodMetadata,
    Sandbox,
    SandboxConfig,
)
from cri_async.core.ports import BackendStatus, ProcessStatus
from cri_async.core.runtime import Runtime
from cri_async.registry.fake_store import CatalogImage, FakeImageStore
from cri_async.store.db import SQLiteStore
from tests.support.poll import until

CATALOG = (
    CatalogImage("busybox"),
    CatalogImage("quitter", stop_signal="SIGQUIT"),
    CatalogImage("numeric-stop", stop_signal="9"),
    CatalogImage("owned", user="1234"),
)


class Broken(Exception):
    """What the instrumented backend raises when told to fail."""


class Backend(FakeBackend):
    """The fake backend, recording what the core asks of it; a create can be held at a
    gate (to overlap concurrent calls) or made to fail after doing its work."""

    def __init__(self, handler: str, root: Path) -> None:
        super().__init__(handler, root)
        self.calls: list[tuple[str, str]] = []  # (method, sandbox or container id)
        self.kills: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        self.gated = {"create_sandbox", "create_container"}  # the calls the gate holds
        self.fail: set[str] = set()  # method names that raise Broken
        self.ready = True

    async def _step(self, method: str, obj_id: str) -> None:
        self.calls.append((method, obj_id))
        if self.gate is not None and method in self.gated:
            await self.gate.wait()

    def called(self, method: str) -> list[str]:
        return [i for m, i in self.calls if m == method]

    async def probe(self) -> BackendStatus:
        status = await super().probe()
        return status if self.ready else BackendStatus(False, "Broken", "told so by the test")

    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        await self._step("create_sandbox", sandbox.id)
        made = await super().create_sandbox(sandbox)
        if "create_sandbox" in self.fail:
            raise Broken("sandbox create failed")
        return made

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        self.calls.append(("stop_sandbox", sandbox.id))
        await super().stop_sandbox(sandbox)

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        self.calls.append(("remove_sandbox", sandbox.id))
        await super().remove_sandbox(sandbox)

    async def create_container(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        *,
        pid_target: Container | None = None,
    ) -> Container:
        await self._step("create_container", container.id)
        made = await super().create_container(sandbox, container, image, pid_target=pid_target)
        if "create_container" in self.fail:
            raise Broken("container create failed")
        return made

    async def start_container(self, container: Container) -> int:
        await self._step("start_container", container.id)
        return await super().start_container(container)

    async def delete_container(self, container: Container) -> None:
        self.calls.append(("delete_container", container.id))
        await super().delete_container(container)

    async def kill(self, container: Container, signal: int) -> None:
        self.kills.append((container.id, signal))
        await super().kill(container, signal)

    async def recover(self, container: Container) -> ProcessStatus:
        if "recover" in self.fail:
            raise Broken("recover failed")
        return await super().recover(container)

    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        if self.gate is not None and "reconcile" in self.gated:  # not a call to record
            await self.gate.wait()
        return await super().reconcile(sandboxes, containers)


@dataclass
class Rig:
    root: Path
    store: SQLiteStore
    images: FakeImageStore
    backend: Backend
    runtime: Runtime
    events: list[ContainerEvent] = field(default_factory=list)
    _collector: asyncio.Task[None] | None = None

    def collect(self) -> None:
        sub = self.runtime.events.subscribe()

        async def run() -> None:
            async for ev in sub:
                self.events.append(ev)

        self._collector = asyncio.create_task(run())

    async def seen(self, count: int) -> list[tuple[str, EventType]]:
        """(object id, type) of the events so far, once there are at least ``count``."""
        await until(lambda: len(self.events) >= count, what=f"{count} events")
        return [(e.container_id, e.type) for e in self.events]

    async def pod(self, name: str = "web", **config: object) -> str:
        return await self.runtime.sandboxes.run(pod_config(name, **config), "")

    async def container(
        self, pod: str, name: str = "c", *command: str, image: str = "busybox", **config: object
    ) -> str:
        cfg = container_config(name, image, *command, **config)
        return await self.runtime.containers.create(pod, cfg)

    async def started(self, pod: str, name: str, *command: str, **config: object) -> str:
        cid = await self.container(pod, name, *command, **config)
        await self.runtime.containers.start(cid)
        return cid

    async def restart(
        self, *, hold: set[str] | None = None, fail: set[str] | None = None
    ) -> Runtime:
        """A new Runtime on the same database and backend root, as after a crash; the
        backend calls named in ``hold`` wait at its gate (``backend.gate.set()``), those
        in ``fail`` raise."""
        await self.runtime.close()
        self.backend = Backend("", self.root / "fake")
        self.backend.fail = fail or set()
        if hold:
            self.backend.gate = asyncio.Event()
            self.backend.gated = hold
        self.runtime = Runtime(self.store, {"": self.backend}, self.images, limits=LIMITS)
        await self.runtime.start()
        return self.runtime


def pod_config(name: str, **config: object) -> SandboxConfig:
    meta = PodMetadata(name=name, uid=f"uid-{name}", namespace="default")
    return SandboxConfig(metadata=meta, **config)  # type: ignore[arg-type]


def container_config(name: str, image: str, *command: str, **config: object) -> ContainerConfig:
    fields: dict[str, object] = {
        "metadata": ContainerMetadata(name=name),
        "image": ImageSpec(image=image),
        "command": command or ("sleep", "infinity"),
    }
    return ContainerConfig(**(fields | config))  # type: ignore[arg-type]


LIMITS = Limits(cleanup_timeout=5.0, kill_timeout=5.0)


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SQLiteStore(tmp_path / "state.db", sync="normal")
    await store.open()
    images = FakeImageStore(store, CATALOG)
    backend = Backend("", tmp_path / "fake")
    runtime = Runtime(store, {"": backend}, images, limits=LIMITS)
    await runtime.start()
    for c in CATALOG:
        await images.pull(ImageSpec(image=c.ref), None)
    r = Rig(tmp_path, store, images, backend, runtime)
    try:
        yield r
    finally:
        if r._collector is not None:
            r._collector.cancel()
        await r.runtime.close()
        await store.close()
