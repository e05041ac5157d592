"""Rendered parts of pages, kept while what they show is unchanged.

The overview of every account and a user's history are the expensive parts of their pages;
the ledger changes once a billing window, so the same HTML is served until then. Each key
carries the version of what it shows (see web.cache)."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from markupsafe import Markup

from web.cache import Memo


class Fragments:
    def __init__(self, size: int = 512) -> None:
        self._memo = Memo.lru(size)

    def get(self, key: Hashable, render: Callable[[], str]) -> Markup:
        # Markup: safe, rendered by our autoescaping templates.
        return self._memo.get(key, lambda: Markup(render()))
