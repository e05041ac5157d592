"""The ledger: accounts, transactions, usage lines, cursors, windows, prices and the InfluxDB
outbox. This package owns every SQL statement against those tables; everyone else holds a
`LedgerReader` (read-only) or a `LedgerWriter` and gets typed rows back."""

from billing_engine.ledger.protocols import Export, LedgerReader, LedgerWriter
from billing_engine.ledger.reader import SqliteLedgerReader, iso
from billing_engine.ledger.records import (
    BILLING,
    UNASSIGNED,
    Account,
    AccountKind,
    AccountPlan,
    AuditEntry,
    DailyCost,
    JobUsage,
    Kind,
    LeaseLost,
    LedgerError,
    LedgerUnavailable,
    MemberMonth,
    MetricsSnapshot,
    Posting,
    Statement,
    StatementEntry,
    Status,
    Transaction,
    UsageLine,
    WeekUsage,
    WindowBill,
)
from billing_engine.ledger.schema import VERSION as SCHEMA_VERSION
from billing_engine.ledger.schema import month_start, next_month, week_start
from billing_engine.ledger.writer import Ledger
from gpuacct.sqlite import SchemaError, Target, exists

__all__ = [
    "BILLING", "SCHEMA_VERSION", "UNASSIGNED", "Account", "AccountKind", "AccountPlan",
    "AuditEntry", "DailyCost", "Export", "JobUsage", "Kind", "LeaseLost", "Ledger",
    "LedgerError", "LedgerReader", "LedgerUnavailable", "LedgerWriter", "MemberMonth",
    "MetricsSnapshot", "Posting", "SchemaError", "SqliteLedgerReader", "Statement",
    "StatementEntry", "Status", "Transaction", "UsageLine", "WeekUsage", "WindowBill", "exists",
    "iso", "month_start", "next_month", "open_reader", "week_start",
]


def open_reader(path: Target) -> SqliteLedgerReader:
    """A read-only handle on the ledger at `path` (which must exist)."""
    if not exists(path):
        raise LedgerError(f"no ledger at {path}")
    return SqliteLedgerReader(path)
