"""The one-time token cache, with an injected clock."""

from __future__ import annotations

import re

import pytest

from cri_async.core.errors import ResourceExhausted
from cri_async.services.rpc import to_status
from cri_async.streaming.tokens import MAX_TOKENS, TokenCache, new_token


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_form() -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{8}", new_token())
    assert new_token(lambda n: b"\xff" * n) == "________"


def test_single_use() -> None:
    cache: TokenCache[str] = TokenCache(Clock())
    t = cache.insert("req")
    assert cache.consume(t) == "req"
    assert cache.consume(t) is None
    assert cache.consume("unknown!") is None


def test_expiry_after_a_minute_and_consumed_even_when_expired() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(clock)
    t = cache.insert("req")
    clock.now = 59.999
    u = cache.insert("other")
    clock.now = 60.0
    assert cache.consume(t) is None
    assert len(cache) == 1  # t is gone, u remains
    assert cache.consume(u) == "other"


def test_at_most_1000_outstanding() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(clock)
    tokens = [cache.insert(i) for i in range(MAX_TOKENS)]
    assert len(set(tokens)) == MAX_TOKENS
    with pytest.raises(ResourceExhausted) as err:
        cache.insert(MAX_TOKENS)
    assert to_status(err.value).name == "RESOURCE_EXHAUSTED"
    cache.consume(tokens[0])
    cache.insert(-1)  # room for exactly one
    with pytest.raises(ResourceExhausted):
        cache.insert(-2)
    clock.now = 61.0  # expired entries are collected on insert
    cache.insert(-3)
    assert len(cache) == 1


def test_collisions_are_retried() -> None:
    values = iter([b"\x00" * 6, b"\x00" * 6, b"\x01" * 6])
    cache: TokenCache[str] = TokenCache(Clock(), random=lambda n: next(values))
    a = cache.insert("a")
    b = cache.insert("b")
    assert a != b
