"""What the ledger hands out and takes in: typed rows, never a connection."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

from pydantic import BaseModel

Kind = Literal["opening", "charge", "recharge", "adjustment", "refund"]
Posting = Literal["recharge", "adjustment", "refund"]  # what a person may post


class LedgerError(Exception):
    """A change the ledger refuses (unknown user, a key already used); nothing was written."""


class LedgerUnavailable(LedgerError):
    """The ledger could not be read (missing, locked, damaged): try again later."""


class LeaseLost(LedgerError):
    """Another engine holds the billing lease now; this one stops billing."""


class UsageLine(NamedTuple):  # a tuple: a window makes thousands
    user: str
    job: str
    node: str
    gpu_model: str
    gpu_seconds: Decimal
    cpu_core_seconds: Decimal
    cost: Decimal
    gpu_idle_seconds: Decimal = Decimal(0)  # of gpu_seconds, those idle-held
    idle_cost: Decimal = Decimal(0)  # of cost, what the idle-held seconds cost


@dataclass(frozen=True)
class WindowBill:
    """One window, billed: everything `commit_window` writes in one transaction."""

    end: int
    previous: int  # the previous window's end: the usage since then is in this one
    expected_last: int | None  # the last window billed when the cursors were read
    lines: list[UsageLine]
    cursors: dict[str, Decimal]  # each moved series' value at `end`
    price_effective: float
    holder: str  # the engine's billing lease
    opening_balance: Decimal  # for accounts that first appear in this window
    trial_mode: bool  # record usage and cost, debit nothing
    reason: str


class Account(BaseModel, frozen=True):
    user: str
    balance: Decimal
    charged: Decimal  # every charge ever
    opened_at: float
    cost_since: Decimal  # usage cost of windows ending since the time asked for


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


@dataclass(frozen=True)
class WeekUsage:
    """One user's week (from Monday 00:00 UTC, windows ending in it): the waste report's row."""

    week_start: int
    user: str
    gpu_seconds: Decimal
    gpu_idle_seconds: Decimal  # of gpu_seconds, those idle-held
    cost: Decimal  # GPU and CPU
    idle_cost: Decimal  # of cost, what the idle-held GPU seconds cost

    @property
    def idle_share(self) -> Decimal:
        """Of the GPU time, the idle-held share (0 with no GPU time)."""
        return self.gpu_idle_seconds / self.gpu_seconds if self.gpu_seconds else Decimal(0)

    @property
    def idle_cost_share(self) -> Decimal:
        return self.idle_cost / self.cost if self.cost else Decimal(0)


@dataclass(frozen=True)
class DailyCost:
    day_start: int  # Unix time of the day's start (UTC)
    gpu_model: str  # "" for CPU-only lines
    cost: Decimal


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the billing engine's /metrics shows, read in one go."""

    accounts: list[tuple[str, Decimal, Decimal]]  # user, balance, charged
    last_window: int | None
    outbox_backlog: int
    charged_total: Decimal
    windows: int
