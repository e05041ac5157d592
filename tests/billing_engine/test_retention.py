"""Retention: old usage lines rolled up per day in the transaction that deletes them, every sum
over the rolled days (balances, statements, exports, weekly and monthly sums) unchanged."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from billing_engine.engine import Engine
from gpuacct.config import BillingSettings
from gpuacct.promql import PrometheusReplicas
from gpuacct.store import Target
from ledger import AccountPlan, Ledger, UsageLine, WindowBill
from tests.fixtures.ledger import forge, sql

DAY = 86400
START = 1793491200  # 2026-11-01 00:00 UTC, a month's start
STEP = 1800  # windows of 30 minutes: 48 a day
LAB = AccountPlan("lab", "pi", frozenset({"carol"}), {}, Decimal(500))


def bill(ledger: Ledger, end: int) -> None:
    """A window with lines of three users, two jobs each, on two nodes and GPU models."""
    lines = [UsageLine(user, f"job-{(end // STEP + j) % 3}", f"n{j}", f"model-{j}",
                       Decimal(STEP) / (j + 1), Decimal("12.5") * (u + 1),
                       Decimal("0.013") * (u + j + 1) + Decimal(end % 7) / 1000,
                       Decimal(j), Decimal("0.000001") * j)
             for u, user in enumerate(("alice", "bob", "carol")) for j in range(2)]
    assert ledger.commit_window(WindowBill(
        end=end, previous=end - STEP, expected_last=ledger.last_window(), lines=lines,
        cursors={}, price_effective=float(START), holder="test", opening_balance=Decimal(100),
        trial_mode=False, reason=f"usage in the window ending {end}"))
    ledger.outbox_done(end)


def four_days(target: Target) -> Ledger:
    """Four days of windows; bob joins the lab account in the middle of the second."""
    ledger = Ledger(target)
    assert ledger.acquire_lease("test", 3600)
    ledger.sync_accounts([LAB], START, "test")
    assert ledger.begin_billing(START, {})
    for end in range(START + STEP, START + 4 * DAY + 1, STEP):
        if end == START + DAY + DAY // 2:
            ledger.sync_accounts([AccountPlan("lab", "pi", frozenset({"carol", "bob"}), {},
                                              Decimal(500))], end - STEP, "test")
        bill(ledger, end)
    return ledger


def sums_of(ledger: Ledger, since: int, until: int) -> dict[str, object]:
    """Everything a person or a report reads of the days [since, until)."""
    usage: dict[tuple[str, ...], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 5)
    for row in ledger.export_rows("usage", since, until):
        for i, value in enumerate(row[6:11]):
            usage[(*row[2:6], row[11])][i] += Decimal(value)
    users = ("alice", "bob", "carol")
    return {
        "balances": ledger.balances(),
        "accounts": ledger.accounts(since),
        "statements": [ledger.statement(a, START) for a in ("alice", "bob", "carol", "lab")],
        "usage": dict(usage),
        "transactions": list(ledger.export_rows("transactions", since, until)),
        "by_job": [ledger.usage_by_job(u, since, until) for u in users],
        "daily": [sorted(ledger.daily_cost(u, since), key=repr) for u in users],
        "weeks": ledger.weekly_usage(0, 2e9),
        "months": ledger.member_months(START),
    }


def line_count(ledger: Ledger) -> int:
    return int(sql(ledger).execute("SELECT COUNT(*) FROM usage_lines").fetchone()[0])


def test_rolling_up_old_days_keeps_every_balance_statement_and_export_sum(
        store_target: Target) -> None:
    ledger = four_days(store_target)
    before = sums_of(ledger, START, START + 4 * DAY)
    assert ledger.account("lab") is not None
    lines = line_count(ledger)
    assert lines == 4 * 48 * 6

    spans: dict[tuple[str, ...], tuple[str, str]] = {}  # each rolled line: first start, last end
    for row in ledger.export_rows("usage", START, START + 3 * DAY):
        key = (str(int(row[1][8:10])), *row[2:6], row[11])  # its day of the month
        first, last = spans.get(key, (row[0], row[1]))
        spans[key] = (min(first, row[0]), max(last, row[1]))

    rolled = []
    while (day := ledger.roll_up_day(START + 3 * DAY)) is not None:
        rolled.append(day)
    assert rolled == [START, START + DAY, START + 2 * DAY]  # oldest first, the last day kept
    assert sums_of(ledger, START, START + 4 * DAY) == before
    assert ledger.invariant_violations() == []
    # A line per user, job, node, model and account a day (bob's second day is split between
    # his own account and the lab's), covering from its first window to its last.
    assert line_count(ledger) == 3 * 18 + 6 + 49 * 6
    assert {(str(int(row[1][8:10])), *row[2:6], row[11]): (row[0], row[1])
            for row in ledger.export_rows("usage", START, START + 3 * DAY)} == spans
    bob_day_2 = {row[11] for row in ledger.export_rows("usage", START + DAY, START + 2 * DAY)
                 if row[2] == "bob"}
    assert bob_day_2 == {"bob", "lab"}

    # Idempotent, and billing goes on.
    assert ledger.roll_up_day(START + 3 * DAY) is None
    bill(ledger, START + 4 * DAY + STEP)
    assert ledger.invariant_violations() == []


def test_a_day_whose_points_wait_for_influxdb_is_not_rolled_up(store_target: Target) -> None:
    ledger = four_days(store_target)
    assert ledger.acquire_lease("test", 3600)
    with forge(ledger) as db:
        db.execute("INSERT INTO influx_outbox (window_end) VALUES ($1)", (START + STEP,))
    assert ledger.roll_up_day(START + 3 * DAY) is None
    ledger.outbox_done(START + STEP)
    assert ledger.roll_up_day(START + 3 * DAY) == START


def test_the_engine_rolls_up_lines_older_than_usage_line_days(store_target: Target) -> None:
    ledger = four_days(store_target)
    settings = BillingSettings(ledger=ledger.path, usage_line_days=2)
    engine = Engine(settings, ledger, PrometheusReplicas(["http://127.0.0.1:9"]), None)
    now = START + 4 * DAY + 3600  # lines of days before START + 2 days are due
    for _ in range(5):
        engine._roll_up(now)
        engine._next_roll_up = 0.0
    rolled = sql(ledger).execute("SELECT COUNT(*) FROM usage_lines WHERE covers_from IS NOT NULL")
    assert rolled.fetchone()[0] == 18 * 2 + 6  # two days, bob's second split in two
    never = Engine(BillingSettings(ledger=ledger.path, usage_line_days=None), ledger,
                   PrometheusReplicas(["http://127.0.0.1:9"]), None)
    never._roll_up(now + 10 * DAY)
    assert ledger.roll_up_day(START + 2 * DAY) is None  # nothing more was rolled
