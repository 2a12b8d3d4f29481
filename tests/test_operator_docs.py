"""The operator docs match the code: the generated config reference is fresh, the socket
and handler names they give are the real defaults, and the packaging metadata is current."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from cri_async.config import KNOWN_HANDLERS, ServerConfig

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_generated_from_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_config_doc.py"), str(out)],
        check=True,
        capture_output=True,
    )
    committed = (ROOT / "docs/configuration.md").read_text()
    assert out.read_text() == committed, (
        "docs/configuration.md is stale: run `.venv/bin/python scripts/gen_config_doc.py`"
    )
    for section in ("[server]", "[metrics]", "[tracing]", '[runtimes."<handler>"]'):
        assert f"## `{section}`" in committed


def test_docs_give_the_default_socket_and_real_handler_names() -> None:
    endpoint = f"unix://{ServerConfig().socket}"
    for doc in ("kubelet.md", "crictl.md"):
        assert endpoint in (ROOT / "docs" / doc).read_text(), doc
    kubelet = (ROOT / "docs/kubelet.md").read_text()
    assert f"containerRuntimeEndpoint: {endpoint}" in kubelet
    assert f"imageServiceEndpoint: {endpoint}" in kubelet
    handlers = re.findall(r"^handler: (\S+)$", (ROOT / "docs/runtimeclass.md").read_text(), re.M)
    assert handlers and set(handlers) <= set(KNOWN_HANDLERS)


def test_readme_says_what_make_test_costs_and_starts() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"`make test` takes about \d+ minutes on 2 cores", readme)
    for thing in ("docker-registry", "runc, crun and gVisor containers", "CNI bridge"):
        assert thing in readme


def test_license_is_an_spdx_expression_setuptools_accepts_silently(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    # Build the metadata as `pip install -e .` does, from a copy, with this venv's setuptools.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "cri_async").mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "cri_async/__init__.py").write_text("")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools.build_meta as b; print(b.prepare_metadata_for_build_wheel('m'))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Deprecat" not in out.stderr and "project.license" not in out.stderr, out.stderr
    metadata = next((tmp_path / "m").glob("*/METADATA")).read_text()
    assert "License-Expression: Apache-2.0" in metadata
