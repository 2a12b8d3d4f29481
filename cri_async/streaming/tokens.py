"""One-time tokens for streaming URLs (pure; the clock is injected).

A token is 6 random bytes in unpadded URL-safe base64 (8 characters). It stands for the
cached request, which alone decides what the connection may do. Tokens are single use
(looking one up removes it, expired or not), expire after a minute, and at most 1000 are
outstanding: beyond that issuing fails with ResourceExhausted, as kubelet's cache does.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from cri_async.core.errors import ResourceExhausted

TOKEN_TTL = 60.0
MAX_TOKENS = 1000
TOKEN_BYTES = 6

T = TypeVar("T")


def new_token(random: Callable[[int], bytes] = secrets.token_bytes) -> str:
    return base64.urlsafe_b64encode(random(TOKEN_BYTES)).rstrip(b"=").decode("ascii")


class TokenCache(Generic[T]):
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float = TOKEN_TTL,
        capacity: int = MAX_TOKENS,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        self._random = random
        # Insertion order is expiry order (one ttl for all), so expiry pops from the front.
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        while self._items:
            token, (deadline, _) = next(iter(self._items.items()))
            if deadline > now:
                return
            del self._items[token]

    def insert(self, value: T) -> str:
        now = self._clock()
        self._expire(now)
        if len(self._items) >= self._capacity:
            raise ResourceExhausted(
                f"too many outstanding streaming requests ({self._capacity}); retry later"
            )
        for _ in range(8):
            token = new_token(self._random)
            if token not in self._items:
                self._items[token] = (now + self._ttl, value)
                return token
        raise ResourceExhausted("could not generate a unique streaming token")

    def consume(self, token: str) -> T | None:
        """The cached value, once: the entry is gone afterwards, whatever the outcome."""
        entry = self._items.pop(token, None)
        if entry is None:
            return None
        deadline, value = entry
        return value if deadline > self._clock() else None
