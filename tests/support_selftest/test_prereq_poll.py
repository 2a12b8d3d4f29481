"""The prerequisite helper (skip locally, fail under CI) and the polling helper."""

from __future__ import annotations

import asyncio
import itertools
import sys

import pytest

from tests.support.poll import until, until_sync
from tests.support.prereq import need_binary, need_file, need_root, on_ci, unavailable


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert on_ci()
    with pytest.raises(pytest.fail.Exception, match="test prerequisite missing: nothing here"):
        unavailable("nothing here")
    with pytest.raises(pytest.fail.Exception, match="needs no-such-binary-x1 \\(apt-get"):
        need_binary("no-such-binary-x1", "apt-get install it")
    with pytest.raises(pytest.fail.Exception, match="needs /no/such/file"):
        need_file("/no/such/file")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_a_missing_prerequisite_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not on_ci()
    with pytest.raises(pytest.skip.Exception, match="nothing here"):
        unavailable("nothing here")
    with pytest.raises(pytest.skip.Exception, match="needs no-such-binary-x1"):
        need_binary("no-such-binary-x1")


def test_present_prerequisites_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert need_binary("sh").endswith("/sh")
    assert need_file(sys.executable) == sys.executable
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception):
        need_binary("sh")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match=r"needs root \(mknod\)"):
        need_root("mknod")


async def test_until_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert await until(lambda: next(counter) >= 3 and "done", interval=0.001) == "done"

    async def coro_check() -> int:
        return next(counter)

    assert await until(coro_check, interval=0.001) > 0


async def test_until_times_out_with_a_message_naming_the_wait() -> None:
    with pytest.raises(
        AssertionError, match=r"timed out after 0.05s waiting for the door; last value \[\]"
    ):
        await until(lambda: [], timeout=0.05, interval=0.01, what="the door")


async def test_until_ignores_chosen_errors_and_reports_the_last() -> None:
    def flaky() -> bool:
        raise ConnectionRefusedError("not yet")

    with pytest.raises(AssertionError, match="last error ConnectionRefusedError: not yet"):
        await until(flaky, timeout=0.05, ignore=(OSError,))
    with pytest.raises(ConnectionRefusedError):  # not ignored: raised at once
        await until(flaky, timeout=5)


async def test_until_bounds_a_check_that_never_returns() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for"):
        await until(hangs, timeout=0.05)


def test_until_sync() -> None:
    counter = itertools.count()
    assert until_sync(lambda: next(counter) == 2, interval=0.001) is True
    with pytest.raises(AssertionError, match="waiting for nothing; last value 0"):
        until_sync(lambda: 0, timeout=0.02, interval=0.005, what="nothing")
