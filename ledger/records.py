"""What the ledger hands out and takes in: typed rows, never a connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, NamedTuple

from pydantic import BaseModel

Kind = Literal["opening", "charge", "recharge", "adjustment", "refund"]
Posting = Literal["recharge", "adjustment", "refund"]  # what a person may post
AccountKind = Literal["personal", "group", "unassigned"]
Status = Literal["open", "frozen", "closed"]
UNASSIGNED = "unassigned"  # the account unknown users' usage goes to under `unknown_users: refuse`
BILLING = "gpuacct-billing"  # the actor of charges and of the accounts billing opens


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
    unknown_users: str = "open"  # open | refuse | account:<name> (config.BillingSettings)
    births: dict[str, float] = field(default_factory=dict)  # when new or reset series began


@dataclass(frozen=True)
class AccountPlan:
    """An account as the config describes it; `sync_accounts` makes the ledger agree."""

    name: str
    owner: str
    members: frozenset[str] | None  # None: the config does not manage its members
    monthly_limits: dict[str, Decimal]  # member -> the most they may spend per calendar month
    opening_balance: Decimal


class Account(BaseModel, frozen=True):
    name: str  # a personal account is named after its user
    kind: AccountKind = "personal"
    owner: str = ""
    status: Status = "open"
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
    actor: str = ""


class AuditEntry(BaseModel, frozen=True):
    id: int
    at: float
    actor: str
    action: str  # e.g. "recharge", "account.open", "membership", "login.failed"
    target: str  # the account or user acted on
    detail: str


@dataclass(frozen=True)
class MemberMonth:
    """What a member of an account spent in a calendar month, and the most they may."""

    account: str
    user: str
    cost: Decimal
    limit: Decimal | None


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

    accounts: list[Account]  # cost_since is 0: not read here
    charged_to: dict[str, str]  # user -> the account their usage goes to now
    members_this_month: list[MemberMonth]
    last_window: int | None
    outbox_backlog: int
    charged_total: Decimal
    windows: int


@dataclass(frozen=True)
class StatementEntry:
    at: float  # a day's start for a day's charges, else the transaction's time
    kind: str  # "charges" (a day's usage charges, summed) or a transaction's kind
    amount: Decimal
    reason: str
    actor: str


@dataclass(frozen=True)
class Statement:
    """An account's calendar month (UTC): what it began with, every posting, what it ended
    with, and each member's usage. Charges count in the month their window ends in."""

    account: Account
    month_start: int
    month_end: int  # exclusive
    opening: Decimal
    entries: list[StatementEntry]
    members: list[tuple[str, Decimal]]  # user, usage cost charged to this account in the month

    @property
    def closing(self) -> Decimal:
        return self.opening + sum((e.amount for e in self.entries), Decimal(0))

    @property
    def charges(self) -> Decimal:
        return -sum((e.amount for e in self.entries if e.kind == "charges"), Decimal(0))

    @property
    def credits(self) -> Decimal:
        """Everything but usage charges: recharges, adjustments, refunds, the opening."""
        return sum((e.amount for e in self.entries if e.kind != "charges"), Decimal(0))
