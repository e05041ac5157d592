"""What the pages and the API show, read through the ledger's read-only handle."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel

from gpuacct.config import BillingSettings
from gpuacct.periods import month_start, week_start
from gpuacct.tiers import Tier, account_tier
from ledger import (
    JobUsage,
    LedgerReader,
    MemberMonth,
    Transaction,
    WeekUsage,
)
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


@dataclass(frozen=True)
class ChargeDay:
    day: str  # YYYY-MM-DD (UTC)
    charged: Decimal
    jobs: list[JobUsage]


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

    def charged_to(self, user: str) -> str:
        """The account the user's usage goes to now (their own name if the ledger knows none);
        cached until the ledger changes."""
        found = self._memo.get(("charged_to", self.version()),
                               lambda: self.reader.charged_to(time.time()))
        return found.get(user, user)

    def account(self, user: str) -> AccountRow | None:
        return next((a for a in self.overview() if a.user == user), None)

    def transactions(self, user: str, page: int, size: int) -> tuple[list[Transaction], int]:
        return self.reader.transactions(user, page, size)

    def usage_by_job(self, user: str, since: float) -> list[JobUsage]:
        return self.reader.usage_by_job(user, since)

    def members(self, account: str, now: float | None = None) -> list[MemberMonth]:
        """The users charged to the account now, each with this month's spending and limit."""
        now = time.time() if now is None else now
        months = {m.user: m for m in self.reader.member_months(month_start(now), account)}
        return [months.get(user) or MemberMonth(account, user, Decimal(0), None)
                for user in self.reader.members(account, now)]

    def postings(self, account: str) -> list[Transaction]:
        return self.reader.postings(account)

    def charge_days(self, account: str, user: str, days: int, now: float | None = None
                    ) -> list[ChargeDay]:
        """The account's usage charges per UTC day of the last `days`, newest first, each with
        the user's usage by job that day (a group's charges are all its members')."""
        now = time.time() if now is None else now
        start = (int(now) // DAY - days + 1) * DAY
        return [ChargeDay(time.strftime("%Y-%m-%d", time.gmtime(day)), charged,
                          self.reader.usage_by_job(user, day, day + DAY))
                for day, charged in sorted(self.reader.daily_charges(account, start).items(),
                                           reverse=True)]

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
