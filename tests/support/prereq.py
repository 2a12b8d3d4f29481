"""Test prerequisites: what a test needs from the machine (root, a binary, a kernel
feature). Missing, the test is skipped locally but fails under ``CI=true``: CI must have
every prerequisite (``make test`` installs them), so a skip there would hide a broken
machine, not an inapplicable test."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under ``CI=true``, saying what is missing."""
    if on_ci():
        pytest.fail(f"test prerequisite missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need_root(why: str = "") -> None:
    if os.geteuid() != 0:
        unavailable(f"needs root ({why})" if why else "needs root")


def need_binary(name: str, hint: str = "", *, sbin: bool = False) -> str:
    """The path of ``name`` on PATH (and the sbin directories with ``sbin``), or
    :func:`unavailable` naming it (``hint``: how to install it)."""
    path = shutil.which(name) or (shutil.which(name, path=SBIN) if sbin else None)
    if path is None:
        unavailable(f"needs {name}" + (f" ({hint})" if hint else ""))
    return path


def need_file(path: str, hint: str = "") -> str:
    """``path`` if it exists, else :func:`unavailable` naming it."""
    if not os.path.exists(path):
        unavailable(f"needs {path}" + (f" ({hint})" if hint else ""))
    return path
