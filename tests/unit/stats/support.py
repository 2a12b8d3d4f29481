"""Helpers shared by the stats tests."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_files(name: str) -> dict[str, str]:
    """A fixture directory as {file name: content}."""
    return {p.name: p.read_text() for p in sorted((FIXTURES / name).iterdir())}
