"""The web's one cache: what a page shows, kept until what it was made from changes.

Keys carry the version of their source (the ledger's, for accounts and rendered fragments),
so a stale entry is never found again and ages out of the LRU; answers from Prometheus and
the enforcer, which have no version, live for a few seconds instead (a TTL cache)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from cachetools import Cache, LRUCache, TTLCache

T = TypeVar("T")


class Memo:
    """`get(key, make)`: the cached value, or `make()` stored under `key`. Two threads may
    make the same value at once; both results are equal, and one is kept."""

    def __init__(self, store: Cache[Hashable, Any]) -> None:
        self._store = store
        self._lock = threading.Lock()

    @classmethod
    def lru(cls, size: int) -> Memo:
        return cls(LRUCache(maxsize=size))

    @classmethod
    def ttl(cls, seconds: float, size: int = 64) -> Memo:
        return cls(TTLCache(maxsize=size, ttl=seconds))

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._store.pop(key, None)

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            try:
                hit: T = self._store[key]
                return hit
            except KeyError:
                pass
        value = make()
        with self._lock:
            self._store[key] = value
        return value
