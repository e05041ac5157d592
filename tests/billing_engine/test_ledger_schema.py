"""The ledger's schema versions: a ledger made before versions were recorded migrates in place
and keeps everything; readers never migrate and never write."""

from __future__ import annotations

import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from billing_engine.ledger import (
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    SchemaError,
    SqliteLedgerReader,
    UsageLine,
    open_reader,
)
from billing_engine.metrics import build_registry
from gpuacct.config import BillingSettings
from tests.fixtures.ledger import sql

# Made by the ledger code of commit 9a45de9 (schema without a version): two accounts opened
# by three billed windows, a recharge, an adjustment, a price version, cursors, one window
# waiting in the InfluxDB outbox, and a billing lease.
OLD = Path(__file__).parent / "data" / "ledger-v0.sqlite"
TABLES = ("accounts", "transactions", "usage_lines", "cursors", "windows", "influx_outbox",
          "price_versions", "meta", "lease")


def contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sql(path)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        db.close()


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite3"
    shutil.copyfile(OLD, path)
    return path


def test_an_old_ledger_migrates_in_place_and_keeps_every_balance_line_and_cursor(
        old_ledger: Path) -> None:
    before = contents(old_ledger)
    assert sql(old_ledger).execute("PRAGMA user_version").fetchone() == (0,)
    ledger = Ledger(old_ledger)
    assert sql(old_ledger).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    # Version 3 adds the idle columns (nothing idle before) and sums each user's weeks.
    before["usage_lines"] = [(*row, "0", "0") for row in before["usage_lines"]]
    assert contents(old_ledger) == before
    weeks = ledger.weekly_usage(0, 2e9)
    assert {(w.user, w.gpu_seconds, w.gpu_idle_seconds, w.cost) for w in weeks} == {
        (user, sum((Decimal(r[5]) for r in before["usage_lines"] if r[1] == user), Decimal(0)),
         Decimal(0), sum((Decimal(r[7]) for r in before["usage_lines"] if r[1] == user),
                         Decimal(0)))
        for user in ("alice", "bob")}
    assert {w.week_start for w in weeks} == {1764547200}  # Monday 2025-12-01
    assert ledger.balances() == {"alice": Decimal("145.749997"), "bob": Decimal("99.849999")}
    assert ledger.cursors() == {"gpu|alice|sid-1|n1|0|A100": Decimal(280),
                                "cpu|bob|train.py|n2": Decimal("90.75")}
    assert ledger.window_lines(1764547380) == [
        UsageLine("alice", "sid-1", "n1", "NVIDIA A100", Decimal(60), Decimal("12.5"),
                  Decimal("1.500001")),
        UsageLine("bob", "train.py", "n2", "", Decimal(0), Decimal("30.25"), Decimal("0.050000"))]
    assert (ledger.billing_start(), ledger.last_window()) == (1764547200, 1764547380)
    assert (ledger.outbox_windows(), ledger.outbox_backlog()) == ([1764547380], 2)
    [(version, _, reason)] = ledger.price_versions()
    assert (version.cpu_per_core_minute, reason) == (Decimal("0.001"), "new year")
    assert ledger.invariant_violations() == []
    # ...and it goes on working: money posted after the migration adds up.
    ledger.post("bob", "recharge", Decimal("0.000001"), 1764547500.0, "after-migration")
    assert ledger.balance("bob") == Decimal("99.850000")
    assert ledger.invariant_violations() == []
    ledger.close()
    Ledger(old_ledger).close()  # opening again migrates nothing
    assert sql(old_ledger).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_reader_neither_migrates_nor_writes(old_ledger: Path) -> None:
    reader = open_reader(old_ledger)
    with pytest.raises(SchemaError, match="start gpuacct-billing once to migrate it"):
        reader.balances()
    Ledger(old_ledger).close()
    reader = SqliteLedgerReader(old_ledger)
    assert reader.balance("alice") == Decimal("145.749997")
    db = reader._db()  # the handle the web holds: a write through it fails
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
        db.execute("UPDATE accounts SET balance = '1000000' WHERE user = 'alice'")
    assert reader.balance("alice") == Decimal("145.749997")
    assert not hasattr(reader, "post") and not hasattr(reader, "commit_window")


def test_a_ledger_of_a_newer_schema_is_refused(old_ledger: Path) -> None:
    db = sqlite3.connect(old_ledger)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaError, match="newer than this gpuacct knows"):
        Ledger(old_ledger)


def test_no_reader_for_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        open_reader(tmp_path / "nothing.sqlite3")


def test_billing_metrics_say_when_the_ledger_cannot_be_read(old_ledger: Path,
                                                            tmp_path: Path) -> None:
    missing = build_registry(BillingSettings(ledger=tmp_path / "nothing.sqlite3"), None)
    assert missing.get_sample_value("gpuacct_billing_ledger_up") == 0
    assert missing.get_sample_value("gpuacct_account_balance", {"user": "alice"}) is None
    unmigrated = build_registry(BillingSettings(ledger=old_ledger), None)
    assert unmigrated.get_sample_value("gpuacct_billing_ledger_up") == 0
    Ledger(old_ledger).close()
    assert unmigrated.get_sample_value("gpuacct_billing_ledger_up") == 1
    assert unmigrated.get_sample_value("gpuacct_account_balance",
                                       {"user": "alice"}) == 145.749997
    assert unmigrated.get_sample_value("gpuacct_billing_outbox_backlog") == 2
