"""What the pages and the API show, read through the ledger's read-only handle."""

from __future__ import annotations

import time
from decimal import Decimal

from pydantic import BaseModel

from billing_engine.ledger import JobUsage, LedgerReader, Transaction, WeekUsage, week_start
from gpuacct.config import BillingSettings
from gpuacct.tiers import Tier, account_tier
from web.cache import Memo

__all__ = ["AccountRow", "JobUsage", "LedgerView", "Transaction", "WeekUsage"]
DAY = 86400
WEEK = 7 * DAY


class AccountRow(BaseModel, frozen=True):
    user: str  # the account's name: a personal account's is its user's
    kind: str = "personal"
    status: str = "open"
    balance: Decimal
    tier: Tier
    cost_24h: Decimal
    charged: Decimal
    opened_at: float


class LedgerView:
    """The ledger as the web shows it: accounts with their tier, history, usage, daily cost."""

    def __init__(self, reader: LedgerReader, settings: BillingSettings) -> None:
        self.reader = reader
        self.settings = settings
        self._memo = Memo.lru(4)

    def version(self) -> tuple[object, ...]:
        return self.reader.version()

    def overview(self, now: float | None = None) -> list[AccountRow]:
        """Every account; cached until the ledger changes (it changes once a minute)."""
        if now is not None:
            return self._accounts(now)
        return self._memo.get(("overview", self.version()), lambda: self._accounts(time.time()))

    def _accounts(self, now: float) -> list[AccountRow]:
        return [AccountRow(user=a.name, kind=a.kind, status=a.status, balance=a.balance,
                           tier=account_tier(self.settings, a.name, a.balance),
                           cost_24h=a.cost_since, charged=a.charged, opened_at=a.opened_at)
                for a in self.reader.accounts(cost_since=now - DAY)]

    def account(self, user: str) -> AccountRow | None:
        return next((a for a in self.overview() if a.user == user), None)

    def transactions(self, user: str, page: int, size: int) -> tuple[list[Transaction], int]:
        return self.reader.transactions(user, page, size)

    def usage_by_job(self, user: str, since: float) -> list[JobUsage]:
        return self.reader.usage_by_job(user, since)

    def daily_cost(self, user: str, days: int, now: float | None = None
                   ) -> dict[str, dict[str, Decimal]]:
        """{day (UTC, YYYY-MM-DD): {GPU model or "CPU only": cost}} for the last `days`."""
        now = time.time() if now is None else now
        start = (int(now) // DAY - days + 1) * DAY
        result: dict[str, dict[str, Decimal]] = {
            time.strftime("%Y-%m-%d", time.gmtime(start + d * DAY)): {} for d in range(days)}
        for cost in self.reader.daily_cost(user, start):
            day = time.strftime("%Y-%m-%d", time.gmtime(cost.day_start))
            if day in result:
                result[day][cost.gpu_model or "CPU only"] = cost.cost
        return result

    def weeks(self, user: str, count: int, now: float | None = None) -> list[WeekUsage]:
        """The user's last `count` weeks, this one first (weeks without usage are left out)."""
        this = week_start(time.time() if now is None else now)
        return self.reader.weekly_usage(this - (count - 1) * WEEK, this + 1, user)[::-1]

    def week(self, start: int) -> list[WeekUsage]:
        """Every user's week from `start` (a Monday), the most idle cost first."""
        return sorted(self.reader.weekly_usage(start, start + 1),
                      key=lambda w: (-w.idle_cost, -w.gpu_idle_seconds, w.user))
