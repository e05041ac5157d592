"""Fair share's usage, from the ledger gpuacct-billing keeps (billing.ledger): each account's
cost per hour, decayed with allocator.priority.half_life_seconds, and the account each user
is charged to. Read again at most every REFRESH_SECONDS; where there is no ledger (an
enforcer on a host without it) or it cannot be read, nobody has used anything, and the queue
is first come, first served."""

from __future__ import annotations

import logging
import threading

from allocator.fairshare import Usage, decayed
from gpuacct import store
from gpuacct.config import Settings
from ledger import ReadOnlyLedger

log = logging.getLogger(__name__)
REFRESH_SECONDS = 60.0
HALF_LIVES = 10  # older usage weighs under a thousandth: not read


class LedgerUsage:
    def __init__(self, settings: Settings) -> None:
        self.target = settings.billing.ledger
        self.half_life = settings.allocator.priority.half_life_seconds
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._usage = Usage()
        self._ledger: ReadOnlyLedger | None = None
        self._said: str | None = None

    def __call__(self, now: float) -> Usage:
        with self._lock:
            if self._read_at is None or abs(now - self._read_at) >= REFRESH_SECONDS:
                self._read_at = now
                self._usage = self._read(now)
            return self._usage

    def _read(self, now: float) -> Usage:
        try:
            if self._ledger is None:
                if not store.exists(self.target):
                    return self._unread(f"no ledger at {store.redacted(str(self.target))}")
                self._ledger = ReadOnlyLedger(self.target)
            costs = self._ledger.hourly_costs(int(now - HALF_LIVES * self.half_life))
            accounts = self._ledger.charged_to(now)
        except (store.StoreError, OSError) as exc:
            self._ledger = None
            return self._unread(str(exc))
        pieces: dict[str, list[tuple[float, float]]] = {}
        for account, hour, cost in costs:
            pieces.setdefault(account, []).append((hour + 1800.0, float(cost)))
        self._said = None
        return Usage({a: decayed(p, now, self.half_life) for a, p in pieces.items()}, accounts)

    def _unread(self, why: str) -> Usage:
        if why != self._said:
            log.warning("fair share without usage (first come, first served): %s", why)
            self._said = why
        return Usage()
