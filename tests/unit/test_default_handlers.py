"""The default handlers are decided once, from the runtimes installed; the documented
defaults show exactly those."""

from __future__ import annotations

from pathlib import Path

from cri_async import config, configtoml
from cri_async.config import HandlerConfig, default_runtimes, installed_runtimes


def test_only_installed_runtimes_become_default_handlers() -> None:
    assert default_runtimes(("runc", "crun", "runsc")) == {
        "": HandlerConfig("runc"),
        "runc": HandlerConfig("runc"),
        "crun": HandlerConfig("crun"),
        "runsc": HandlerConfig("runsc"),
    }
    assert default_runtimes(("crun",)) == {"": HandlerConfig("crun"), "crun": HandlerConfig("crun")}
    # Nothing installed: "" stays runc, and Status says it is not ready and why.
    assert default_runtimes(()) == {"": HandlerConfig("runc")}


def test_installed_runtimes_looks_in_path(tmp_path: Path) -> None:
    for name in ("crun", "youki", "not-a-runtime"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    (tmp_path / "runc").write_text("not executable")
    assert installed_runtimes(str(tmp_path)) == ("crun", "youki")


def test_documented_defaults_list_only_installed_handlers() -> None:
    text = configtoml.default_toml(("runc", "crun"))
    assert "# Not found in PATH, so not configured: youki, runsc." in text
    assert "[runtimes.youki]" not in text and "[runtimes.crun]" in text
    assert config.parse(text).runtimes == default_runtimes(("runc", "crun"))
    everything = configtoml.default_toml(config.KNOWN_HANDLERS)
    assert "Not found in PATH" not in everything
    assert set(config.parse(everything).runtimes) == {"", *config.KNOWN_HANDLERS}


def test_the_process_decides_once() -> None:
    assert config.Config().runtimes == default_runtimes(config.installed_at_first_use())
    assert config.installed_at_first_use() is config.installed_at_first_use()
