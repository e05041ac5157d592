"""gpuacct-billing as a process: killed at random moments, two of them on one ledger, /metrics."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from billing_engine.ledger import Ledger
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
    for _ in range(20):
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
