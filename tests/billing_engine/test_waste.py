"""The weekly waste report: idle-held GPU seconds billed from the exporter's counters through
the real Prometheus, priced as the GPU seconds they are part of, summed per user and week as
windows commit; the report equals the ledger's lines and the counters for the same week."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing_engine.metrics import build_registry
from gpuacct.periods import week_start
from ledger import Ledger
from tests.billing_engine.conftest import Rig, running
from tests.fixtures.gpus import GIB
from tests.fixtures.ledger import sql
from tests.fixtures.servers import wait_for
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.integration, pytest.mark.root]
A100_PER_MINUTE = Decimal("0.50")


def idle_counters(rig: Rig) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for family in text_string_to_metric_families(rig.exporter.scrape()):
        for s in family.samples:
            if s.name == "gpuacct_job_gpu_idle_seconds_total" and s.labels["user"] in rig.users:
                user = s.labels["user"]
                totals[user] = totals.get(user, Decimal(0)) + Decimal(repr(s.value))
    return totals


def ledger_lines(ledger: Ledger, since: int, until: float = 2e9) -> dict[str, list[Decimal]]:
    """Per user: GPU seconds, idle seconds, cost, idle cost of the lines of windows ending in
    [since, until)."""
    sums: dict[str, list[Decimal]] = {}
    for user, gpu, idle, cost, idle_cost in sql(ledger).execute(
            'SELECT "user", gpu_seconds, gpu_idle_seconds, cost, idle_cost FROM usage_lines '
            "WHERE window_end >= $1 AND window_end < $2", (since, until)):
        row = sums.setdefault(user, [Decimal(0)] * 4)
        for i, value in enumerate((gpu, idle, cost, idle_cost)):
            row[i] += Decimal(value)
    return sums


def billed_idle(rig: Rig) -> dict[str, Decimal]:
    return {u: s[1] for u, s in ledger_lines(Ledger(rig.ledger_path), 0).items() if s[1]}


def test_the_weeks_waste_equals_the_ledger_and_the_counters(
        rig: Rig, processes: Processes, test_users: dict[str, UnixUser]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    procs = {}
    for worker, gpu, sm in ((alice, 0, 0), (bob, 1, 50)):  # alice idle-holds GPU 0, bob works
        procs[worker.name] = processes.python(worker, "train.py", "120")
        wait_until_exec(procs[worker.name], "train.py")
        rig.gpus.put(gpu, procs[worker.name].pid, used_memory=2 * GIB, sm_util=sm)
    with running(rig.engine()):
        time.sleep(6)
        for proc in procs.values():
            rig.gpus.remove(proc.pid)
            proc.kill()
            proc.wait()
        truth = rig.wait_until_billed()
        idle = idle_counters(rig)
        try:
            wait_for(lambda: billed_idle(rig) == idle, timeout=20, what="idle seconds billed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {idle} counted, {billed_idle(rig)} billed") from None
    assert set(idle) == {alice.name}
    billed_alice = sum(g for (u, _, _), (g, _) in truth.items() if u == alice.name)
    assert Decimal(3) < idle[alice.name] <= billed_alice  # after 1 s of 6, never more

    ledger = Ledger(rig.ledger_path)
    week = week_start(time.time())
    report = {w.user: w for w in ledger.weekly_usage(week, week + 1) if w.user in rig.users}
    lines = ledger_lines(ledger, week, week + 7 * 86400)
    assert set(report) == {alice.name, bob.name}
    for user, row in report.items():
        assert [row.gpu_seconds, row.gpu_idle_seconds, row.cost, row.idle_cost] == lines[user]
    assert report[alice.name].gpu_idle_seconds == idle[alice.name]
    assert report[bob.name].gpu_idle_seconds == 0 and report[bob.name].idle_cost == 0
    # The idle seconds are priced as the GPU seconds they are part of (to the micro-unit, a
    # rounding per line).
    idle_cost = (idle[alice.name] * A100_PER_MINUTE / 60).quantize(Decimal("0.000001"),
                                                                  rounding=ROUND_HALF_EVEN)
    windows = sql(ledger).execute('SELECT COUNT(*) FROM usage_lines WHERE "user" = $1 AND '
                                  "gpu_idle_seconds != '0'", (alice.name,)).fetchone()[0]
    assert abs(report[alice.name].idle_cost - idle_cost) <= Decimal("0.000001") * windows
    assert 0 < report[alice.name].idle_share <= 1

    # So do the billing engine's gauges of the week so far (which gpuacct balance shows)...
    registry = build_registry(rig.settings.billing, None)
    for name in ("gpu_seconds", "gpu_idle_seconds", "cost", "idle_cost"):
        assert registry.get_sample_value(f"gpuacct_account_week_{name}", {
            "user": alice.name}) == float(getattr(report[alice.name], name)), name
    assert registry.get_sample_value("gpuacct_account_week_start_timestamp_seconds") == week

    # ...and the CSV.
    out = subprocess.run([sys.executable, "-m", "billing_engine", "--config",
                          str(rig.config_path), "export", "waste", "--from", "2020-01-01",
                          "--to", "2100-01-01"], capture_output=True, text=True, check=True)
    rows = {r["user"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert Decimal(rows[alice.name]["gpu_idle_seconds"]) == idle[alice.name]
    assert Decimal(rows[alice.name]["idle_cost"]) == report[alice.name].idle_cost
    assert rows[bob.name]["idle_share"] == "0.0000"
