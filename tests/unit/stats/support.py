"""Helpers shared by the stats tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_files(name: str) -> dict[str, str]:
    """A fixture directory as {file name: content}."""
    return {p.name: p.read_text() for p in sorted((FIXTURES / name).iterdir())}


def unavailable(reason: str) -> None:
    """Skip, or fail under ``CI=true`` where a missing privilege or kernel feature is a bug
    of the CI machine, not a reason to skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root")
