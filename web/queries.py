"""What the pages and the API show, read from the billing ledger.

Sums of money are exact: each cost has at most six decimals, so it is summed in SQLite as an
integer number of micro-units and turned back into a Decimal here."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from billing_engine.metrics import thresholds
from gpuacct.config import BillingSettings, tier_of

MICROS = "CAST(ROUND(CAST({} AS REAL) * 1000000) AS INTEGER)"


def money(micros: int | None) -> Decimal:
    return Decimal(micros or 0).scaleb(-6)


class AccountRow(BaseModel, frozen=True):
    user: str
    balance: Decimal
    tier: str
    cost_24h: Decimal
    charged: Decimal
    opened_at: float


class Transaction(BaseModel, frozen=True):
    id: int
    at: float
    kind: str
    amount: Decimal
    balance_after: Decimal
    reason: str


@dataclass(frozen=True)
class JobUsage:
    job: str
    node: str
    gpu_model: str
    gpu_hours: float
    cpu_core_hours: float
    cost: Decimal


def tier(settings: BillingSettings, user: str, balance: Decimal) -> str:
    return tier_of(balance, thresholds(settings, user))


class LedgerView:
    """Read-only queries, one SQLite connection per thread."""

    def __init__(self, path: Path, settings: BillingSettings) -> None:
        self.uri = f"file:{path.resolve()}?mode=ro"
        self.settings = settings
        self._local = threading.local()
        self._overview: tuple[tuple[object, ...], list[AccountRow]] | None = None

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.uri, uri=True, timeout=5.0, check_same_thread=False)
            self._local.db = db
        return db

    def version(self) -> tuple[object, ...]:
        """Changes whenever a window is billed or money is posted."""
        return tuple(self.db.execute(
            "SELECT (SELECT MAX(window_end) FROM windows), (SELECT MAX(id) FROM transactions)"
        ).fetchone())

    def overview(self, now: float | None = None) -> list[AccountRow]:
        """Every account; cached until the ledger changes (it changes once a minute)."""
        version = self.version()
        cached = self._overview
        if cached is not None and cached[0] == version and now is None:
            return cached[1]
        since = (time.time() if now is None else now) - 86400
        cost = dict(self.db.execute(
            f"SELECT user, SUM({MICROS.format('cost')}) FROM usage_lines "
            "WHERE window_end >= ? GROUP BY user", (since,)).fetchall())
        rows = [AccountRow(user=user, balance=Decimal(balance),
                           tier=tier(self.settings, user, Decimal(balance)),
                           cost_24h=money(cost.get(user)), charged=Decimal(charged),
                           opened_at=opened)
                for user, balance, charged, opened in self.db.execute(
                    "SELECT user, balance, charged, opened_at FROM accounts ORDER BY user")]
        self._overview = (version, rows)
        return rows

    def account(self, user: str) -> AccountRow | None:
        return next((a for a in self.overview() if a.user == user), None)

    def transactions(self, user: str, page: int, size: int) -> tuple[list[Transaction], int]:
        total = self.db.execute("SELECT COUNT(*) FROM transactions WHERE user = ?",
                                (user,)).fetchone()[0]
        rows = self.db.execute(
            "SELECT id, at, kind, amount, balance_after, reason FROM transactions "
            "WHERE user = ? ORDER BY id DESC LIMIT ? OFFSET ?", (user, size, page * size))
        return [Transaction(id=i, at=at, kind=kind, amount=Decimal(a),
                            balance_after=Decimal(b), reason=reason)
                for i, at, kind, a, b, reason in rows], total

    def usage_by_job(self, user: str, since: float) -> list[JobUsage]:
        rows = self.db.execute(
            "SELECT job, node, gpu_model, SUM(CAST(gpu_seconds AS REAL)), "
            f"SUM(CAST(cpu_core_seconds AS REAL)), SUM({MICROS.format('cost')}) "
            "FROM usage_lines WHERE user = ? AND window_end >= ? "
            "GROUP BY job, node, gpu_model ORDER BY 6 DESC LIMIT 200", (user, since))
        return [JobUsage(job, node, model, gpu / 3600, cpu / 3600, money(cost))
                for job, node, model, gpu, cpu, cost in rows]

    def daily_cost(self, user: str, days: int, now: float | None = None
                   ) -> dict[str, dict[str, Decimal]]:
        """{day (UTC, YYYY-MM-DD): {GPU model or "CPU only": cost}} for the last `days`."""
        now = time.time() if now is None else now
        start = (int(now) // 86400 - days + 1) * 86400
        result: dict[str, dict[str, Decimal]] = {
            time.strftime("%Y-%m-%d", time.gmtime(start + d * 86400)): {} for d in range(days)}
        for day, model, micros in self.db.execute(
                "SELECT date(window_end, 'unixepoch'), gpu_model, "
                f"SUM({MICROS.format('cost')}) FROM usage_lines "
                "WHERE user = ? AND window_end >= ? GROUP BY 1, 2", (user, start)):
            if day in result:
                result[day][model or "CPU only"] = money(micros)
        return result
