"""Embedding API: a full CRI server on a temporary socket, in-process.

    async with CRIServer(tmp_path) as srv:
        pod = await srv.client.run_pod(pod_config("web"))

The default is the ``fake`` backend (no root needed). ``restart()`` stops and starts the
server on the same state, as a node operator's restart would.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from cri_async.backends.fake.backend import FakeBackend
from cri_async.client import CRIClient
from cri_async.config import (
    Config,
    FakeConfig,
    FakeImageConfig,
    HandlerConfig,
    NetworkSection,
    ServerConfig,
    StateConfig,
)
from cri_async.server import Server

_SUN_PATH_MAX = 100


class CRIServer:
    def __init__(
        self,
        root: str | Path,
        *,
        backend: str = "fake",
        handlers: Sequence[str] = ("",),
        images: Sequence[FakeImageConfig] | None = None,
        image_backend: str = "fake",
        config: Config | None = None,
    ) -> None:
        self.root = Path(root)
        self._sockdir: str | None = None
        sock = self.root / "cri.sock"
        if len(str(sock)) > _SUN_PATH_MAX:  # pytest's tmp paths can be too long for sun_path
            self._sockdir = tempfile.mkdtemp(prefix="cri-")
            sock = Path(self._sockdir) / "cri.sock"
        base = config or Config()
        self.config = dataclasses.replace(
            base,
            server=dataclasses.replace(base.server, socket=str(sock)),
            state=StateConfig(
                root=str(self.root / "state"), run_root=str(self.root / "run"), sync="normal"
            ),
            runtimes={h: HandlerConfig(backend=backend) for h in handlers}
            if config is None
            else base.runtimes,
            fake=FakeConfig(list(images)) if images is not None else base.fake,
            images=dataclasses.replace(base.images, backend=image_backend)
            if config is None
            else base.images,
            # The host's /etc/cni/net.d is not the embedded server's business.
            network=dataclasses.replace(base.network, conf_dirs=[str(self.root / "cni")])
            if base.network.conf_dirs == NetworkSection().conf_dirs
            else base.network,
        )
        self.server: Server | None = None
        self._client: CRIClient | None = None

    @property
    def socket_path(self) -> Path:
        return Path(self.config.server.socket)

    @property
    def client(self) -> CRIClient:
        if self._client is None:
            raise RuntimeError("CRIServer is not running")
        return self._client

    def fake(self, handler: str = "") -> FakeBackend:
        """The fake backend of a handler, e.g. to add ExecSync hooks."""
        assert self.server is not None
        backend = self.server.backends[handler]
        assert isinstance(backend, FakeBackend)
        return backend

    async def start(self) -> None:
        self.server = Server(self.config)
        await self.server.start()
        self._client = CRIClient(self.socket_path)

    async def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> CRIServer:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)


__all__ = ["CRIServer", "FakeImageConfig", "ServerConfig"]
