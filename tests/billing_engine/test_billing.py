"""The billing engine against the real Prometheus and InfluxDB, the exporter on fake GPUs, and
real processes of real users; windows of 2 seconds."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from subprocess import Popen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuacct.config import GpuPrice, PriceVersion
from ledger import Ledger
from tests.billing_engine.conftest import WINDOW, Rig, running
from tests.fixtures.docker import IMAGE, Dockerd
from tests.fixtures.gpus import A100, RTX3090
from tests.fixtures.ledger import forge, sql
from tests.fixtures.servers import wait_for
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.integration, pytest.mark.root]
Users = dict[str, UnixUser]
PRICE = {A100: Decimal("0.50"), RTX3090: Decimal("0.20"), "": Decimal(0)}
CPU_PRICE = Decimal("0.01")


def start_job(rig: Rig, processes: Processes, user: UnixUser, job: str,
              gpu: int | None) -> Popen[bytes]:
    proc = processes.python(user, "train.py", "120", env={"GPUACCT_JOB": job})
    wait_until_exec(proc, "train.py")
    if gpu is not None:
        rig.gpus.put(gpu, proc.pid)
    return proc


def stop_job(rig: Rig, proc: Popen[bytes]) -> None:
    rig.gpus.remove(proc.pid)
    proc.kill()
    proc.wait()


def cost_micros(ledger: Ledger, user: str) -> int:
    """What the ledger says a user's usage cost, in micro-units (InfluxDB's cost_micros)."""
    return int(sum(Decimal(c) for (c,) in sql(ledger).execute(
        'SELECT cost FROM usage_lines WHERE "user" = $1', (user,))) * 1_000_000)


def check_ledger(rig: Rig, opening: Decimal = Decimal(100), debited: bool = True) -> Ledger:
    """Every cost is usage times the price; balances follow; windows contiguous, once each."""
    ledger = Ledger(rig.ledger_path)
    costs: dict[str, Decimal] = {}
    for user, model, gpu, cpu, cost in sql(ledger).execute(
            'SELECT "user", gpu_model, gpu_seconds, cpu_core_seconds, cost FROM usage_lines'):
        expected = ((Decimal(gpu) * PRICE[model] + Decimal(cpu) * CPU_PRICE) / 60).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
        assert Decimal(cost) == expected, (user, model, gpu, cpu, cost)
        costs[user] = costs.get(user, Decimal(0)) + Decimal(cost)
    for user, balance in ledger.balances().items():
        assert balance == opening - (costs.get(user, Decimal(0)) if debited else 0), user
    assert ledger.invariant_violations() == []
    ends = [r[0] for r in sql(ledger).execute("SELECT window_end FROM windows ORDER BY window_end")]
    start = ledger.billing_start() or 0
    assert ends == list(range(start + WINDOW, start + WINDOW * (len(ends) + 1), WINDOW))
    starts = [r[0] for r in sql(ledger).execute(
        "SELECT window_start FROM windows ORDER BY window_end")]
    assert starts == [start, *ends[:-1]]
    return ledger


def test_ten_windows_of_jobs_starting_and_stopping_are_billed_exactly(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    with running(rig.engine()):
        a = start_job(rig, processes, alice, "a", gpu=0)
        time.sleep(4)
        b = start_job(rig, processes, bob, "b", gpu=1)
        time.sleep(6)
        a2 = start_job(rig, processes, alice, "a2", gpu=0)  # shares GPU 0 with a
        cpu_only = start_job(rig, processes, bob, "cpu", gpu=None)
        time.sleep(4)
        stop_job(rig, b)
        time.sleep(4)
        stop_job(rig, a)
        stop_job(rig, cpu_only)
        time.sleep(4)
        stop_job(rig, a2)
        truth = rig.wait_until_billed()
    assert {(u, j) for u, j, _ in truth} >= {(alice.name, "a"), (bob.name, "b"),
                                              (alice.name, "a2"), (bob.name, "cpu")}
    assert truth[(alice.name, "a", A100)][0] > 10
    assert truth[(bob.name, "cpu", "")][1] > 2
    ledger = check_ledger(rig)
    assert sql(ledger).execute("SELECT COUNT(*) FROM windows").fetchone()[0] >= 10
    assert ledger.outbox_backlog() == 0
    micros = {u: cost_micros(ledger, u) for u in (alice.name, bob.name)}
    assert {u: v for u, v in rig.influx_sums().items() if u in micros} == micros


def test_prometheus_away_for_three_windows_is_billed_late_and_exact(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    alice = test_users["alice"]
    with running(rig.engine()) as engine:
        job = start_job(rig, processes, alice, "through-outage", gpu=0)
        time.sleep(3)
        rig.prometheus.process.stop()
        stopped = time.time()
        time.sleep(3 * WINDOW + 0.5)
        assert not engine.last_tick_ok  # it tried and could not bill
        rig.prometheus.process.start().wait_ready()
        time.sleep(3)
        stop_job(rig, job)
        rig.wait_until_billed()
    ledger = check_ledger(rig)
    late = sql(ledger).execute("SELECT COUNT(*) FROM windows WHERE window_end > $1 AND "
                             "billed_at > $2 + 3 * $3", (stopped, stopped, WINDOW)).fetchone()[0]
    assert late >= 3  # the windows of the outage were billed after it, in order


def test_exporter_restart_bills_nothing_twice(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    bob = test_users["bob"]
    with running(rig.engine()):
        job = start_job(rig, processes, bob, "restarted", gpu=1)
        time.sleep(4)
        rig.exporter.process.stop()
        time.sleep(WINDOW)
        rig.exporter.restart()
        time.sleep(4)
        stop_job(rig, job)
        truth = rig.wait_until_billed()
    assert truth[(bob.name, "restarted", RTX3090)][0] > 6
    check_ledger(rig)


def test_influxdb_away_billing_goes_on_and_the_outbox_drains(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    carol = test_users["carol"]
    with running(rig.engine()) as engine:
        job = start_job(rig, processes, carol, "influx-outage", gpu=0)
        time.sleep(2)
        rig.influxdb.process.stop()
        ledger = Ledger(rig.ledger_path)
        windows_before = ledger.last_window() or 0
        wait_for(lambda: ledger.outbox_backlog() > 0 and not engine.influx_ok, timeout=10,
                 what="points waiting in the outbox")
        time.sleep(2 * WINDOW)
        assert (ledger.last_window() or 0) >= windows_before + 2 * WINDOW  # billing went on
        rig.influxdb.process.start().wait_ready()
        stop_job(rig, job)
        rig.wait_until_billed()
        wait_for(lambda: ledger.outbox_backlog() == 0, timeout=15, what="the outbox to drain")
    assert engine.influx_ok
    check_ledger(rig)
    micros = cost_micros(ledger, carol.name)
    assert micros > 0
    assert rig.influx_sums()[carol.name] == micros


def test_trial_mode_records_usage_and_cost_but_debits_nothing(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    alice = test_users["alice"]
    with running(rig.engine(trial_mode=True)):
        job = start_job(rig, processes, alice, "trial", gpu=0)
        time.sleep(5)
        stop_job(rig, job)
        rig.wait_until_billed()
    ledger = check_ledger(rig, debited=False)
    assert ledger.balance(alice.name) == Decimal(100)
    assert sql(ledger).execute("SELECT COUNT(*) FROM transactions WHERE kind = 'charge'"
                             ).fetchone()[0] == 0
    cost = sum(Decimal(c) for (c,) in sql(ledger).execute(
        'SELECT cost FROM usage_lines WHERE "user" = $1', (alice.name,)))
    assert cost > Decimal("0.02")


def test_catch_up_after_an_absence_is_bounded_by_max_backfill(rig: Rig) -> None:
    engine = rig.engine(max_backfill_seconds=5 * WINDOW)
    ledger = rig.ledger_path
    now = time.time()
    long_ago = engine.due_window(now) - 50 * WINDOW
    with forge(ledger) as db:  # as if billing had begun long ago and then stopped
        db.execute("INSERT INTO meta VALUES ('billing_start', $1) ON CONFLICT (key) "
                   "DO UPDATE SET value = excluded.value", (str(long_ago),))
    assert engine.tick(now) == 6  # the newest five window lengths, one by one, and no more
    ends = [r[0] for r in sql(ledger).execute("SELECT window_end FROM windows ORDER BY 1")]
    assert ends[-1] == engine.due_window(now)
    assert len(ends) == 6 and ends == list(range(ends[0], ends[-1] + WINDOW, WINDOW))
    starts = sql(ledger).execute("SELECT window_start FROM windows ORDER BY window_end").fetchall()
    assert starts[0][0] == long_ago  # the first covers the whole absence: usage is late, not lost


def test_a_price_version_added_to_the_ledger_prices_the_windows_from_its_time(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    alice = test_users["alice"]
    new_price = Decimal("6.00")
    with running(rig.engine()):
        job = start_job(rig, processes, alice, "repriced", gpu=0)
        time.sleep(2 * WINDOW)
        effective = float(int(time.time()) + 2 * WINDOW)
        (ledger := Ledger(rig.ledger_path)).add_price_version(PriceVersion(
            effective=datetime.fromtimestamp(effective, UTC),
            gpu=[GpuPrice(pattern="A100", per_minute=new_price)]), time.time(), "test")
        time.sleep(4 * WINDOW)
        stop_job(rig, job)
        rig.wait_until_billed()
    lines = sql(ledger).execute(
        "SELECT w.window_start, u.gpu_seconds, u.cpu_core_seconds, u.cost, u.price_effective "
        "FROM usage_lines u "
        "JOIN windows w USING (window_end) WHERE u.user = $1 AND u.gpu_model = $2",
        (alice.name, A100)).fetchall()
    repriced = [line for line in lines if line[0] >= effective]
    assert repriced and len(repriced) < len(lines)
    for start, gpu, cpu, cost, price_effective in lines:
        price = new_price if start >= effective else PRICE[A100]
        assert price_effective == (effective if start >= effective else 0), start
        assert Decimal(cost) == ((Decimal(gpu) * price + Decimal(cpu) * CPU_PRICE) / 60).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


def windows_billed(rig: Rig) -> int:
    ledger = Ledger(rig.ledger_path)
    try:
        return int(sql(ledger).execute("SELECT COUNT(*) FROM windows").fetchone()[0])
    finally:
        ledger.close()


def test_an_engine_back_after_another_billed_reads_the_cursors_again(
        rig: Rig, processes: Processes, test_users: Users) -> None:
    """An engine keeps the cursors between windows. Once another engine has billed some, that
    copy is stale; used, it would bill the other engine's windows a second time."""
    carol = test_users["carol"]
    first, second = rig.engine(), rig.engine()
    job = start_job(rig, processes, carol, "handed-over", gpu=0)
    for engine in (first, second, first):
        with running(engine):
            before = windows_billed(rig)
            wait_for(lambda: windows_billed(rig) >= before + 2, timeout=20,  # noqa: B023
                     what="two windows billed")
    stop_job(rig, job)
    with running(first):
        truth = rig.wait_until_billed()
    assert truth[(carol.name, "handed-over", A100)][0] > 2
    check_ledger(rig)


def test_gpu_time_nobody_is_found_for_is_billed_to_the_unattributed_account(
        rig: Rig, processes: Processes, test_users: Users, dockerd: Dockerd) -> None:
    """A container started on the Docker engine's own socket (its process root, nobody's: this
    node's exporter has no engine to ask) and root's own GPU process are counted by the
    exporter as unattributed; with billing.unattributed_account, that account pays for both,
    exactly what was counted, and root is never billed."""
    alice = test_users["alice"]
    container = dockerd.cli("run", "-d", "--network", "none", IMAGE, "sleep", "120"
                            ).stdout.strip()
    root = subprocess.Popen(["sleep", "120"])
    try:
        with running(rig.engine(unattributed_account="lab-unattributed")):
            job = start_job(rig, processes, alice, "a", gpu=0)
            rig.gpus.put(1, dockerd.pid(container))
            rig.gpus.put(1, root.pid)
            time.sleep(5)
            rig.gpus.remove(root.pid)
            rig.gpus.remove(dockerd.pid(container))
            stop_job(rig, job)
            time.sleep(1.0)  # the last samples reach the counters and Prometheus
            counted: dict[str, Decimal] = defaultdict(Decimal)
            for family in text_string_to_metric_families(rig.exporter.scrape()):
                for s in family.samples:
                    if s.name == "gpuacct_unattributed_gpu_seconds_total":
                        counted[f"unattributed-{s.labels['container'] or 'host'}"] += Decimal(
                            repr(s.value))
            assert set(counted) == {"unattributed-host", f"unattributed-{container[:12]}"}
            assert all(seconds > 1 for seconds in counted.values()), counted

            def billed() -> dict[str, Decimal]:
                ledger = Ledger(rig.ledger_path)
                try:
                    lines: dict[str, Decimal] = defaultdict(Decimal)
                    for job_id, seconds in sql(ledger).execute(
                            'SELECT job, gpu_seconds FROM usage_lines WHERE "user" = $1 '
                            "AND gpu_model = $2", ("lab-unattributed", RTX3090)):
                        lines[job_id] += Decimal(seconds)
                    return lines
                finally:
                    ledger.close()
            wait_for(lambda: billed() == counted, timeout=30,
                     what="the unattributed account to be billed what the exporter counted")
    finally:
        root.kill()
        root.wait()
        dockerd.cli("rm", "-f", container, check=False)
    ledger = Ledger(rig.ledger_path)
    assert "root" not in ledger.balances() and "lab-unattributed" in ledger.balances()
