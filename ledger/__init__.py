"""The ledger: accounts, transactions, usage lines, cursors, windows, prices and the InfluxDB
outbox. This package owns every SQL statement against those tables; everyone else holds a
`LedgerReader` (read-only) or a `LedgerWriter` and gets typed rows back."""

from gpuacct.store import SchemaError, Target, exists
from ledger.protocols import Export, LedgerReader, LedgerWriter
from ledger.reader import ReadOnlyLedger
from ledger.records import (
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
from ledger.schema import VERSION as SCHEMA_VERSION
from ledger.writer import Ledger

__all__ = [
    "BILLING",
    "SCHEMA_VERSION",
    "UNASSIGNED",
    "Account",
    "AccountKind",
    "AccountPlan",
    "AuditEntry",
    "DailyCost",
    "Export",
    "JobUsage",
    "Kind",
    "LeaseLost",
    "Ledger",
    "LedgerError",
    "LedgerReader",
    "LedgerUnavailable",
    "LedgerWriter",
    "MemberMonth",
    "MetricsSnapshot",
    "Posting",
    "ReadOnlyLedger",
    "SchemaError",
    "Statement",
    "StatementEntry",
    "Status",
    "Transaction",
    "UsageLine",
    "WeekUsage",
    "WindowBill",
    "exists",
    "open_reader",
]


def open_reader(path: Target) -> ReadOnlyLedger:
    """A read-only handle on the ledger at `path` (which must exist)."""
    if not exists(path):
        raise LedgerError(f"no ledger at {path}")
    return ReadOnlyLedger(path)
