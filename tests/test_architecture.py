"""The import rules of docs/architecture.md, checked on the code as it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cri_async"

# What each part may import from cri_async (its own modules always).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    # observe: metrics and spans of each RPC; faults: the test-only crash points (inert
    # unless CRI_ASYNC_TEST_CRASH_FILE is set); streaming: the other half of the edge, which
    # Exec/Attach/PortForward trade for URLs.
    "services": {"core", "api", "observe", "faults", "streaming"},
}
# Parts that implement ports (or are pure helpers of those that do): never the edge, the
# composition root or the server.
ADAPTERS = (
    "backends",
    "pods",
    "registry",
    "stats",
    "store",
    "network",
    "monitor",
    "oci",
    "logs",
    "ttrpc",
    "proc",
    "cgroupfs",
    "files",
    "waits",
    "linux",
    "rootfs",
)
EDGE = {"services", "server", "compose", "cli", "testing", "pytest_plugin"}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The cri_async parts a module imports (``cri_async.x.y`` -> ``x``)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "cri_async":  # submodules, not the package's constants
                names = [
                    f"cri_async.{a.name}"
                    for a in node.names
                    if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").exists()
                ]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cri_async" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(part: str) -> list[Path]:
    target = PACKAGE / part
    if target.is_dir():
        return sorted(target.rglob("*.py"))
    return [target.with_suffix(".py")]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_inner_parts_import_only_what_they_may(part: str) -> None:
    wrong = {
        str(m.relative_to(PACKAGE)): sorted(_imports(m) - ALLOWED[part] - {part})
        for m in _modules(part)
    }
    assert {m: w for m, w in wrong.items() if w} == {}


@pytest.mark.parametrize("part", ADAPTERS)
def test_adapters_never_import_the_edge(part: str) -> None:
    wrong = {
        str(m.relative_to(PACKAGE)): sorted(_imports(m) & EDGE)
        for m in _modules(part)
        if part != "services"
    }
    assert {m: w for m, w in wrong.items() if w} == {}


def test_streaming_reaches_containers_through_the_core() -> None:
    forbidden = set(ADAPTERS) | EDGE
    wrong = {
        str(m.relative_to(PACKAGE)): sorted(_imports(m) & forbidden) for m in _modules("streaming")
    }
    assert {m: w for m, w in wrong.items() if w} == {}


def test_no_module_is_much_over_500_lines() -> None:
    big = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if "api" not in p.relative_to(PACKAGE).parts
        and (n := len(p.read_text().splitlines())) > 520
    }
    assert big == {}


def test_the_rules_see_real_imports() -> None:
    """The checker itself: it finds what a known module imports."""
    assert {"core", "api"} <= _imports(PACKAGE / "services" / "runtime.py")
    assert "core" in _imports(PACKAGE / "backends" / "runc.py")
    assert _part(PACKAGE / "core" / "ports.py") == "core"
