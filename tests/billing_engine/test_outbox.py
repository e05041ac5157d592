"""The InfluxDB outbox: a row per window, points made from its usage lines; older ledgers'
per-point outbox carried over without losing a window."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from billing_engine.influx import LineFormatter
from gpuacct.store import Target
from ledger import Ledger, UsageLine, WindowBill
from tests.fixtures.ledger import sql

LINES = [UsageLine("alice", "train", "n1:9835", "NVIDIA A100-SXM4-80GB", Decimal("60"),
                   Decimal("12.25"), Decimal("0.504083")),
         UsageLine("bob", "cpu", "n2:9835", "", Decimal(0), Decimal("30"), Decimal("0.005"))]


def bill(ledger: Ledger, end: int, lines: list[UsageLine]) -> None:
    assert ledger.acquire_lease("test", 60)
    assert ledger.commit_window(WindowBill(
        end=end, previous=end - 60, expected_last=ledger.last_window(), lines=lines, cursors={},
        price_effective=0, holder="test", opening_balance=Decimal(100), trial_mode=False,
        reason=f"window {end}"))


def test_backlog_counts_points_and_lines_come_back_exact(store_target: Target) -> None:
    ledger = Ledger(store_target)
    for end in (60, 120):
        bill(ledger, end, LINES)
    assert ledger.outbox_windows() == [60, 120]
    assert ledger.outbox_backlog() == 4
    assert sorted(ledger.window_lines(60)) == sorted(LINES)
    ledger.outbox_done(60)
    assert (ledger.outbox_windows(), ledger.outbox_backlog()) == ([120], 2)


def test_an_older_ledgers_waiting_points_become_windows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    formatter = LineFormatter()
    for end in (60, 120, 180):
        bill(ledger, end, LINES)
    ledger.close()
    old = sqlite3.connect(path)  # as the engine left it before the outbox held windows
    old.execute("DROP TABLE influx_outbox")
    old.execute("PRAGMA user_version = 0")
    old.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, line TEXT NOT NULL)")
    old.executemany("INSERT INTO outbox (line) VALUES (?)",
                    [(formatter.line(ln, end),) for end in (120, 180) for ln in LINES])
    old.commit()
    old.close()
    ledger = Ledger(path)
    assert ledger.outbox_windows() == [120, 180]
    assert not sql(ledger).has_table("outbox")
    Ledger(path).close()  # opening again changes nothing
    assert ledger.outbox_windows() == [120, 180]
