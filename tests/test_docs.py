"""The examples in docs/ run as written."""

import re
import subprocess
import sys
from pathlib import Path

from cri_async.client import CRIClient
from cri_async.testing import CRIServer

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


def test_embedding_example_runs(tmp_path: Path) -> None:
    main_example = python_blocks("docs/embedding.md")[0]
    script = tmp_path / "example.py"
    script.write_text(main_example)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


async def test_plugin_fixtures(cri_server: CRIServer, cri_client: CRIClient) -> None:
    assert cri_server.socket_path.is_socket()
    assert (await cri_client.version()).runtime_api_version == "v1"


def test_runtime_handler_examples_are_valid_config() -> None:
    from cri_async import config

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs/runtimes.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        cfg = config.parse('[runtimes.""]\nbackend = "runc"\n' + block)
        assert any(h.backend == "shimv2" for h in cfg.runtimes.values())
