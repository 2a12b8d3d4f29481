"""A default config starts without warnings about runtimes that are not installed; a handler
configured by hand without its binary is reported not ready, with the reason, in Status."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.config import Config, HandlerConfig, ImagesConfig
from cri_async.network.cniconf import DEFAULT_CONFLIST
from cri_async.testing import CRIServer

from .conftest import require


async def test_default_config_starts_without_runtime_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require("runc")
    cfg = dataclasses.replace(Config(), images=ImagesConfig(backend="registry"))
    (tmp_path / "cni").mkdir()  # the embedded server's CNI dir: a network, so no warning
    (tmp_path / "cni/10-net.conflist").write_text(DEFAULT_CONFLIST)
    caplog.set_level(logging.WARNING, logger="cri_async")
    async with CRIServer(tmp_path, config=cfg) as srv:
        st = await srv.client.runtime.Status(pb.StatusRequest(verbose=True))
        handlers = json.loads(st.info["handlers"])
        assert all(h["ready"] for h in handlers.values()), handlers
        assert "youki" not in handlers  # not installed here, so not a default handler
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_hand_configured_handler_without_binary_says_why(tmp_path: Path) -> None:
    require("runc")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig("runc"), "youki": HandlerConfig("youki", binary="/no/youki")},
        images=ImagesConfig(backend="registry"),
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        st = await srv.client.runtime.Status(pb.StatusRequest(verbose=True))
    handlers = json.loads(st.info["handlers"])
    assert handlers["youki"] == {
        "ready": False,
        "reason": "BinaryMissing: /no/youki not found (handler 'youki')",
    }
    assert handlers[""]["ready"] is True and "reason" not in handlers[""]
