"""Rendered parts of pages, kept while what they show is unchanged.

The overview of every account and a user's history are the expensive parts of their pages
(rendering 1,000 rows takes ~15 ms); the ledger changes once a billing window, so the same HTML
is served until then. Each key carries the version of what it shows, so a stale entry is never
found again and simply ages out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from markupsafe import Markup


class Fragments:
    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Markup] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, render: Callable[[], str]) -> Markup:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        html = Markup(render())  # safe: rendered by our autoescaping templates
        with self._lock:
            self._items[key] = html
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return html
