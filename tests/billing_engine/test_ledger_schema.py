"""The ledger's schema versions: a ledger made before versions were recorded migrates in place
and keeps everything; readers never migrate and never write."""

from __future__ import annotations

import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing_engine.metrics import build_registry
from gpuacct import store
from gpuacct.config import BillingSettings
from ledger import (
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    ReadOnlyLedger,
    SchemaError,
    UsageLine,
    open_reader,
)
from tests.fixtures.ledger import sql

# Made by the ledger code of commit 9a45de9 (schema without a version): two accounts opened
# by three billed windows, a recharge, an adjustment, a price version, cursors, one window
# waiting in the InfluxDB outbox, and a billing lease.
OLD = Path(__file__).parent / "data" / "ledger-v0.sqlite"
TABLES = ("accounts", "transactions", "usage_lines", "cursors", "windows", "influx_outbox",
          "price_versions", "meta", "lease")


def contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
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
    assert sql(old_ledger).schema_version() == 0
    ledger = Ledger(old_ledger)
    assert sql(old_ledger).schema_version() == SCHEMA_VERSION
    # Version 3 adds the idle columns (nothing idle before) and sums each user's weeks; version
    # 4 makes each user their own account, names each transaction's actor and each line's
    # account; version 5 gives each cursor its counter's beginning, unknown (NULL) until read,
    # and each line what it covers (NULL: its window, until it is rolled up).
    before["cursors"] = [(*row, None) for row in before["cursors"]]
    before["usage_lines"] = [(*row, "0", "0", row[1], None) for row in before["usage_lines"]]
    before["accounts"] = sorted([(*row, "personal", row[0], "open")
                                 for row in before["accounts"]], key=repr)
    before["transactions"] = sorted([
        (*row, "gpuacct-billing" if row[2] in ("opening", "charge") else "(before the audit)")
        for row in before["transactions"]], key=repr)
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
    assert sql(old_ledger).schema_version() == SCHEMA_VERSION


def test_a_reader_neither_migrates_nor_writes(old_ledger: Path) -> None:
    reader = open_reader(old_ledger)
    with pytest.raises(SchemaError, match="start gpuacct-billing once to migrate it"):
        reader.balances()
    Ledger(old_ledger).close()
    reader = ReadOnlyLedger(old_ledger)
    assert reader.balance("alice") == Decimal("145.749997")
    db = reader._db()  # the handle the web holds: a write through it fails
    with pytest.raises(store.ReadOnlyError, match=r"readonly|read-only"):
        db.execute("UPDATE accounts SET balance = '1000000' WHERE name = 'alice'")
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
                                       {"user": "alice", "account": "alice"}) == 145.749997
    assert unmigrated.get_sample_value("gpuacct_billing_outbox_backlog") == 2


# Made by the ledger code of commit 6f6a8a7 (schema version 3, before accounts were apart from
# users): alice, bob and carol's own accounts opened by three windows (one with idle-held
# seconds, a MIG slice, a job named like a formula), a recharge, an adjustment, a price version.
V3 = Path(__file__).parent / "data" / "ledger-v3.sqlite"


def test_a_version_3_ledger_migrates_with_every_balance_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    shutil.copyfile(V3, path)
    before = {t: sql(path).execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
              for t in ("accounts", "transactions", "usage_lines", "weekly_usage")}
    ledger = Ledger(path)
    assert sql(path).schema_version() == SCHEMA_VERSION
    # Every user is their own account: names, balances, what was charged, unchanged.
    assert [(a.name, a.kind, a.owner, a.status, str(a.balance), str(a.charged), a.opened_at)
            for a in ledger.accounts(0)] == [
        (name, "personal", name, "open", balance, charged, opened)
        for name, balance, charged, opened in before["accounts"]]
    # Every transaction as it was, its actor what can be known: the engine's charges and
    # openings, "(before the audit)" for what a person posted.
    after = sql(path).execute(
        "SELECT id, account, kind, amount, balance_after, at, reason, window_end, "
        "idempotency_key, actor FROM transactions ORDER BY 1").fetchall()
    assert [row[:9] for row in after] == before["transactions"]
    assert {(row[2], row[9]) for row in after} == {
        ("opening", "gpuacct-billing"), ("charge", "gpuacct-billing"),
        ("recharge", "(before the audit)"), ("adjustment", "(before the audit)")}
    # Every line, now with the account it was charged to; the weeks as they were; each
    # member's month summed from the lines.
    lines = sql(path).execute("SELECT * FROM usage_lines ORDER BY 1, 2").fetchall()
    assert [row[:-2] for row in lines] == before["usage_lines"]
    assert all(row[-2] == row[1] and row[-1] is None for row in lines)
    assert sql(path).execute("SELECT * FROM weekly_usage ORDER BY 1, 2").fetchall() == \
        before["weekly_usage"]
    assert {(m.account, m.user, m.cost) for m in ledger.member_months(1793491200)} == {
        ("alice", "alice", Decimal("1.125000")), ("bob", "bob", Decimal("0.005042")),
        ("carol", "carol", Decimal("0.071429"))}
    assert ledger.invariant_violations() == []
    assert ledger.charged_to(2e9) == {"alice": "alice", "bob": "bob", "carol": "carol"}
    # ...and it goes on: a recharge after the migration adds up and names its actor.
    ledger.post("bob", "recharge", Decimal("1.255042"), 1796000000.0, "after", actor="root (cli)")
    assert ledger.balance("bob") == Decimal("100.000000")
    assert ledger.invariant_violations() == []
    # (The fixture's openings are dated when it was made, 2026-12-02; the rest in November.)
    statement = ledger.statement("alice", 1796083200)  # 2026-12
    assert statement is not None and statement.closing == ledger.balance("alice")
