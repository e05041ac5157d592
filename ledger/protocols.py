"""The two interfaces a ledger backend implements: what readers may ask, and what writers may
change. Nothing outside the ledger package sees SQL or a connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import Literal, Protocol

from gpuacct.config import PriceVersion
from ledger.records import (
    Account,
    AccountKind,
    AccountPlan,
    AuditEntry,
    DailyCost,
    JobUsage,
    MemberMonth,
    MetricsSnapshot,
    Posting,
    Statement,
    Status,
    Transaction,
    UsageLine,
    WeekUsage,
    WindowBill,
)

Export = Literal["usage", "transactions", "waste"]


class LedgerReader(Protocol):
    def version(self) -> tuple[object, ...]:
        """Changes whenever a window is billed or money is posted (for caches)."""

    def billing_start(self) -> int | None: ...

    def last_window(self) -> int | None: ...

    def cursors(self) -> dict[str, Decimal]: ...

    def cursor_births(self) -> dict[str, float]:
        """series -> when its counter began (0: it says not), for the cursors that know."""

    def window_lines(self, end: int) -> list[UsageLine]: ...

    def outbox_windows(self) -> list[int]: ...

    def outbox_backlog(self) -> int: ...

    def balance(self, account: str) -> Decimal | None: ...

    def balances(self) -> dict[str, Decimal]: ...

    def accounts(self, cost_since: float) -> list[Account]: ...

    def account(self, name: str) -> Account | None: ...

    def hourly_costs(self, since: int) -> list[tuple[str, int, Decimal]]: ...

    def charged_to(self, at: float) -> dict[str, str]:
        """user -> the account their usage goes to at `at`."""

    def members(self, account: str, at: float) -> list[str]: ...

    def member_months(self, month: int, account: str | None = None) -> list[MemberMonth]: ...

    def audit_entries(self, since: float, limit: int = 1000) -> list[AuditEntry]: ...

    def statement(self, account: str, month: int) -> Statement | None: ...

    def postings(self, account: str, limit: int = 50) -> list[Transaction]: ...

    def daily_charges(self, account: str, since: int) -> dict[int, Decimal]: ...

    def transactions(self, account: str, page: int, size: int
                     ) -> tuple[list[Transaction], int]: ...

    def usage_by_job(self, user: str, since: float, until: float = ...) -> list[JobUsage]: ...

    def daily_cost(self, user: str, since: int) -> list[DailyCost]: ...

    def weekly_usage(self, start: float, end: float, user: str | None = None
                     ) -> list[WeekUsage]: ...

    def export_rows(self, what: Export, start: float, end: float) -> Iterator[list[str]]: ...

    def metrics_snapshot(self) -> MetricsSnapshot: ...

    def price_versions(self) -> list[tuple[PriceVersion, float, str]]: ...

    def invariant_violations(self) -> list[str]: ...

    def close(self) -> None: ...


class LedgerWriter(LedgerReader, Protocol):
    def batch(self) -> AbstractContextManager[None]:
        """Several changes in one transaction: all or none."""

    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool: ...

    def release_lease(self, holder: str) -> None: ...

    def lease_holder(self) -> str | None: ...

    def begin_billing(self, start: int, cursors: dict[str, Decimal],
                      births: dict[str, float] | None = None) -> bool: ...

    def commit_window(self, bill: WindowBill) -> bool: ...

    def outbox_done(self, end: int) -> None: ...

    def roll_up_day(self, before: int) -> int | None:
        """The oldest day of lines before `before` summed per user, job, node, model and
        account, its lines deleted, in one transaction; the day, or None if none was due."""

    def open_account(self, name: str, opening: Decimal, at: float, actor: str = ...,
                     kind: AccountKind = "personal", owner: str | None = None) -> None: ...

    def set_status(self, name: str, status: Status, actor: str, at: float,
                   reason: str = "") -> None: ...

    def set_owner(self, name: str, owner: str, actor: str, at: float) -> None: ...

    def set_membership(self, user: str, account: str, actor: str, at: float) -> None: ...

    def set_member_limit(self, account: str, user: str, monthly: Decimal | None, actor: str,
                         at: float) -> None: ...

    def sync_accounts(self, plans: list[AccountPlan], at: float, actor: str) -> int: ...

    def audit(self, actor: str, action: str, target: str, detail: str = "",
              at: float | None = None) -> None: ...

    def post(self, account: str, kind: Posting, amount: Decimal, at: float, key: str,
             reason: str = "", window_end: int | None = None, actor: str = ...) -> Decimal: ...

    def add_price_version(self, version: PriceVersion, now: float, reason: str,
                          actor: str = ...) -> None: ...

    def backup(self, dest: Path) -> None: ...
