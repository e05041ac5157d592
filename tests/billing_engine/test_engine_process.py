"""gpuacct-billing as a process: killed at random moments, two of them on one ledger, /metrics."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from ledger import Ledger
from stack.process import ManagedProcess, free_port
from tests.billing_engine.conftest import WINDOW, Rig
from tests.billing_engine.test_billing import check_ledger, start_job, stop_job
from tests.fixtures.exporter import promtool_check_metrics
from tests.fixtures.ledger import sql
from tests.fixtures.servers import RUNNING, wait_for
from tests.fixtures.users import Processes, UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]


def engine_process(rig: Rig, name: str, log: Path) -> tuple[ManagedProcess, int]:
    port = free_port()
    proc = ManagedProcess(name, [sys.executable, "-m", "billing_engine", "--config",
                                 str(rig.config_path), "run", "--web.listen-address",
                                 f"127.0.0.1:{port}"], log, f"http://127.0.0.1:{port}/metrics")
    RUNNING.append(proc)
    return proc, port


def test_sigkill_at_random_moments_keeps_the_ledger_whole(
        rig: Rig, processes: Processes, test_users: dict[str, UnixUser], tmp_path: Path) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    jobs = [start_job(rig, processes, alice, "k1", gpu=0),
            start_job(rig, processes, bob, "k2", gpu=1)]
    engine, _ = engine_process(rig, "billing", tmp_path / "billing.log")
    rng = random.Random(20261122)
    for _ in range(10):
        engine.start().wait_ready()
        time.sleep(rng.uniform(0.1, 2.5))
        os.kill(engine.pid, signal.SIGKILL)
        engine.popen.wait()  # type: ignore[union-attr]
        ledger = Ledger(rig.ledger_path)  # after each kill: whole, and windows once each
        assert ledger.invariant_violations() == []
        ends = [r[0] for r in sql(ledger).execute("SELECT window_end FROM windows ORDER BY 1")]
        assert ends == sorted(set(ends))
        if ends:
            assert ends == list(range(ends[0], ends[-1] + WINDOW, WINDOW))
        ledger.close()
    for job in jobs:
        stop_job(rig, job)
    engine.start().wait_ready()
    try:
        rig.wait_until_billed(timeout=40)
    finally:
        engine.stop()
    ledger = check_ledger(rig)
    assert sql(ledger).execute("SELECT COUNT(*) FROM windows").fetchone()[0] >= 10


# On PostgreSQL: test_two_engines_on_postgresql_the_active_one_killed_ten_times.
@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
def test_two_engines_on_one_ledger_one_bills_the_other_waits(
        rig: Rig, processes: Processes, test_users: dict[str, UnixUser], tmp_path: Path) -> None:
    carol = test_users["carol"]
    job = start_job(rig, processes, carol, "two-engines", gpu=0)
    first, first_port = engine_process(rig, "billing-1", tmp_path / "b1.log")
    second, second_port = engine_process(rig, "billing-2", tmp_path / "b2.log")
    first.start().wait_ready()
    second.start().wait_ready()
    try:
        ledger = Ledger(rig.ledger_path)
        wait_for(lambda: (ledger.last_window() or 0) > 0, timeout=15, what="a billed window")
        holder = sql(ledger).execute("SELECT holder FROM lease").fetchone()[0]
        time.sleep(3 * WINDOW)
        assert sql(ledger).execute("SELECT holder FROM lease").fetchone()[0] == holder
        # The holder dies; the other takes over once the lease has expired.
        holder_proc = first if str(first.pid) in holder.split(":") else second
        other_proc = second if holder_proc is first else first
        os.kill(holder_proc.pid, signal.SIGKILL)
        billed = ledger.last_window() or 0
        wait_for(lambda: (ledger.last_window() or 0) > billed + WINDOW, timeout=15,
                 what="the other engine to bill")
        new_holder = sql(ledger).execute("SELECT holder FROM lease").fetchone()[0]
        assert str(other_proc.pid) in new_holder.split(":")
        stop_job(rig, job)
        rig.wait_until_billed()

        text = wait_for(lambda: _scrape(second_port if other_proc is second else first_port),
                        timeout=5, what="/metrics")
        check = promtool_check_metrics(text)
        assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
        assert f'gpuacct_account_balance{{account="{carol.name}",user="{carol.name}"}}' in text
        assert (f'gpuacct_account_threshold{{account="{carol.name}",tier="limited",'
                f'user="{carol.name}"}} 10.0') in text
        assert "gpuacct_billing_outbox_backlog" in text
    finally:
        first.stop()
        second.stop()
    check_ledger(rig)
    charges = sql(rig.ledger_path).execute(
        "SELECT window_end, COUNT(*) FROM transactions WHERE kind = 'charge' "
        "GROUP BY window_end, account HAVING COUNT(*) > 1").fetchall()
    assert charges == []  # no window charged twice


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.parametrize("store_target", ["postgresql"], indirect=True)
def test_two_engines_on_postgresql_the_active_one_killed_ten_times(
        rig: Rig, processes: Processes, test_users: dict[str, UnixUser],
        tmp_path: Path) -> None:
    """Active and standby on one PostgreSQL ledger: each time the engine that bills dies
    (SIGKILL at a random moment), the other bills within the lease; every window once."""
    alice = test_users["alice"]
    lease = float(rig.config["billing"]["lease_seconds"])
    job = start_job(rig, processes, alice, "standby", gpu=0)
    engines = [engine_process(rig, f"billing-{n}", tmp_path / f"billing-{n}.log")[0]
               for n in (1, 2)]
    for engine in engines:
        engine.start().wait_ready()
    ledger = Ledger(rig.ledger_path)

    def holder() -> ManagedProcess | None:
        row = sql(ledger).execute("SELECT holder, expires FROM lease").fetchone()
        if row is None or row[1] < time.time():
            return None
        return next((e for e in engines if str(e.pid) in row[0].split(":")), None)

    rng = random.Random(20261203)
    takeovers = []
    try:
        for _ in range(10):
            active = wait_for(holder, timeout=15, what="an engine to hold the lease")
            time.sleep(rng.uniform(0.05, 2 * WINDOW))  # anywhere: mid-window, mid-commit
            os.kill(active.pid, signal.SIGKILL)
            assert active.popen is not None
            active.popen.wait()
            killed = time.monotonic()
            standby = next(e for e in engines if e is not active)
            wait_for(lambda: holder() is standby, timeout=15,  # noqa: B023 (this turn's)
                     what="the standby to take the lease")
            takeovers.append(time.monotonic() - killed)
            assert ledger.invariant_violations() == []
            ends = [r[0] for r in sql(ledger).execute("SELECT window_end FROM windows ORDER BY 1")]
            assert ends == list(range(ends[0], ends[-1] + WINDOW, WINDOW))  # none skipped
            active.start().wait_ready()  # back, as the standby now
        stop_job(rig, job)
        rig.wait_until_billed(timeout=40)
    finally:
        for engine in engines:
            engine.stop()
    # The lease runs out at most `lease` after the last renewal; the standby looks every
    # half second (a quarter window).
    assert max(takeovers) <= lease + 1.0, takeovers
    check_ledger(rig)  # every window once, contiguous, costs = usage x price, balances agree
    charges = sql(ledger).execute(
        "SELECT window_end, COUNT(*) FROM transactions WHERE kind = 'charge' "
        "GROUP BY window_end, account HAVING COUNT(*) > 1").fetchall()
    assert charges == []
    ledger.close()
