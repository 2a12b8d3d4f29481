"""Waiting in tests: poll the real condition until it holds, never sleep a fixed time.

``await until(check)`` calls ``check`` (a function, or one returning an awaitable) every
``interval`` seconds until it returns something truthy, and returns that. After
``timeout`` seconds it raises AssertionError naming what was awaited, the last value, and
the last exception when ``ignore`` let exceptions count as "not yet".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _describe(check: Callable[[], object], what: str) -> str:
    return what or getattr(check, "__qualname__", repr(check))


def _timed_out(what: str, timeout: float, last: object, error: BaseException | None) -> str:
    msg = f"timed out after {timeout:g}s waiting for {what}; last value {last!r}"
    if error is not None:
        msg += f", last error {type(error).__name__}: {error}"
    return msg


async def until(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Poll ``check`` until it returns a truthy value; return it (see the module doc)."""
    last: object = None
    error: BaseException | None = None
    scope = asyncio.timeout(timeout)  # also bounds a check that never returns
    try:
        async with scope:
            while True:
                try:
                    value = check()
                    if inspect.isawaitable(value):
                        value = await value
                    if value:
                        return value
                    last, error = value, None
                except ignore as e:
                    error = e
                await asyncio.sleep(interval)
    except TimeoutError:
        if not scope.expired():
            raise
        raise AssertionError(_timed_out(_describe(check, what), timeout, last, error)) from None


def until_sync(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """:func:`until` for code without an event loop (fixtures, helper threads)."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
            last, error = value, None
        except ignore as e:
            error = e
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(_describe(check, what), timeout, last, error))
        time.sleep(interval)
