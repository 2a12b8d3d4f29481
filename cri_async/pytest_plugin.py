"""pytest fixtures for embedding a CRI server: ``cri_server`` and ``cri_client``.

Installed as a pytest11 entry point; active when pytest-asyncio is installed. The server
modules are imported only when a fixture is used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cri_async.client import CRIClient
    from cri_async.testing import CRIServer

if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def cri_server(tmp_path: Path) -> AsyncIterator[CRIServer]:
        """A running cri-async server (fake backend) on a temporary socket."""
        from cri_async.testing import CRIServer

        async with CRIServer(tmp_path) as srv:
            yield srv

    @pytest_asyncio.fixture
    async def cri_client(cri_server: CRIServer) -> CRIClient:
        """A client connected to ``cri_server``."""
        return cri_server.client
