"""pytest fixtures for embedding a CRI server: ``cri_server`` and ``cri_client``.

Installed as a pytest11 entry point; active when pytest-asyncio is installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    from cri_async.client import CRIClient
    from cri_async.testing import CRIServer

    @pytest_asyncio.fixture
    async def cri_server(tmp_path: Path) -> AsyncIterator[CRIServer]:
        """A running cri-async server (fake backend) on a temporary socket."""
        async with CRIServer(tmp_path) as srv:
            yield srv

    @pytest_asyncio.fixture
    async def cri_client(cri_server: CRIServer) -> CRIClient:
        """A client connected to ``cri_server``."""
        return cri_server.client
