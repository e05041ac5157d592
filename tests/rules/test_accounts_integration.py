"""A group account end to end: the real billing engine bills three members' GPU processes
(fake GPUs, real processes of test users) from the real Prometheus into the group's account;
a member over their monthly limit is blocked alone, then the group's balance tier blocks all
three, through the real Alertmanager and enforcer; the ledger equals the counters, exactly."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack.process import free_port
from tests.fixtures.enforcement import Cluster, EnforcingNode, wait_until
from tests.fixtures.gpus import device
from tests.fixtures.servers import Server, promql
from tests.fixtures.users import Processes, UnixUser
from tests.rules.test_limits_integration import gpu_job, policy_chain

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]


def gpu_seconds(nodes: list[EnforcingNode], users: set[str]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for node in nodes:
        for family in text_string_to_metric_families(node.exporter.scrape()):
            for s in family.samples:
                if s.name == "gpuacct_job_gpu_seconds_total" and s.labels["user"] in users:
                    user = s.labels["user"]
                    totals[user] = totals.get(user, Decimal(0)) + Decimal(repr(s.value))
    return totals


def ledger_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def test_a_group_account_pays_for_three_members_and_its_tiers_block_them_all(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server],
        start_billing: Callable[[dict[str, Any], int], object]) -> None:
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    members = {u.name for u in (alice, bob, carol)}
    nodes = [cluster.node("gpu01"), cluster.node("gpu02", devices=[device(0)])]
    port = free_port()
    _, prometheus = policy_chain(tmp_path, nodes, f"127.0.0.1:{port}", cluster,
                                 start_prometheus, start_alertmanager)
    ledger = tmp_path / "ledger.sqlite3"
    # An A100 costs 0.50 a minute: three members spend 0.025 a second together. carol may
    # spend 0.02 a month (2.4 GPU seconds); below 0.30 the group is limited (after 12 s).
    start_billing({"billing": {
        "ledger": str(ledger), "prometheus_url": prometheus.url, "window_seconds": 2,
        "settle_seconds": 1.2, "lease_seconds": 2,
        "accounts": {"gat-group": {
            "owner": alice.name, "members": sorted(members), "opening_balance": "0.60",
            "member_monthly_limits": {carol.name: "0.02"},
            "thresholds": {"warning": "0.55", "limited": "0.30", "exhausted": "-100"}}}},
        "influxdb": {"url": "http://127.0.0.1:9"}}, port)

    def reasons(user: UnixUser) -> set[str]:
        hooks = [n.hook(user.name) for n in nodes]
        return {r["alert"] for h in hooks if h and h["block"] for r in h["reasons"]}

    jobs = [gpu_job(processes, alice, nodes[0], 0), gpu_job(processes, bob, nodes[0], 1),
            gpu_job(processes, carol, nodes[1], 0)]
    wait_until(lambda: "GpuacctMemberMonthlyLimitReached" in reasons(carol), timeout=30)
    assert reasons(alice) == reasons(bob) == set()  # carol alone, the group's money left
    wait_until(lambda: all("GpuacctBalanceLimitedBlockGpu" in reasons(u)
                           for u in (alice, bob, carol)), timeout=40)
    # The block holds: a new GPU process of bob is stopped; the running ones go on.
    late = gpu_job(processes, bob, nodes[1], 0)
    wait_until(lambda: late.poll() is not None, timeout=10)
    assert all(j.poll() is None for j in jobs)
    nodes[1].gpus.remove(late.pid)
    for job, node in zip(jobs, (nodes[0], nodes[0], nodes[1]), strict=True):
        job.kill()
        job.wait()
        node.gpus.remove(job.pid)

    # Every GPU second the nodes counted is billed, to the group, and nothing else.
    time.sleep(1.0)
    truth = gpu_seconds(nodes, members)
    assert set(truth) == members

    def billed() -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for user, seconds in ledger_rows(ledger, 'SELECT "user", gpu_seconds FROM usage_lines'):
            totals[user] = totals.get(user, Decimal(0)) + Decimal(seconds)
        return totals
    wait_until(lambda: billed() == truth, timeout=30)
    assert len(ledger_rows(ledger, "SELECT DISTINCT window_end FROM usage_lines")) >= 5
    assert ledger_rows(ledger, "SELECT DISTINCT account FROM usage_lines") == [("gat-group",)]
    [(balance,)] = ledger_rows(ledger, "SELECT balance FROM accounts WHERE name = 'gat-group'")
    costs = sum((Decimal(c) for (c,) in ledger_rows(ledger, "SELECT cost FROM usage_lines")),
                Decimal(0))
    assert Decimal(balance) == Decimal("0.60") - costs
    assert ledger_rows(ledger, "SELECT name FROM accounts") == [("gat-group",)]


def test_a_member_at_work_when_billing_starts_is_charged_to_the_group_from_the_first_window(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], start_prometheus: Callable[..., Server],
        start_billing: Callable[[dict[str, Any], int], object]) -> None:
    """alice trains before the engine starts: the engine learns her membership in the middle
    of its first window, and that window is the group's like every later one. No account of
    her own is opened (unknown_users: open would fund one with free money), and the group's
    statement says what the ledger says, to the micro-unit."""
    alice = test_users["alice"]
    node = cluster.node("gpu01")
    port = free_port()
    prometheus = start_prometheus([
        {"job_name": "gpuacct-exporter", "honor_labels": True, "static_configs": [
            {"targets": [f"127.0.0.1:{node.exporter.port}"]}]}], interval="500ms")
    job = gpu_job(processes, alice, node, 0)
    series = f'gpuacct_job_gpu_seconds_total{{user="{alice.name}"}}'
    wait_until(lambda: promql(prometheus.url, series), timeout=15)
    time.sleep(3.5)  # settle + a window: the engine's first window has her usage in it
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / f"billing-{port}.yaml"
    start_billing({"billing": {
        "ledger": str(ledger), "prometheus_url": prometheus.url, "window_seconds": 2,
        "settle_seconds": 1.2, "lease_seconds": 2, "unknown_users": "open",
        "opening_balance": "1000",
        "accounts": {"gat-first": {"owner": alice.name, "members": [alice.name],
                                   "opening_balance": "5"}}},
        "influxdb": {"url": "http://127.0.0.1:9"}}, port)
    wait_until(lambda: len(ledger_rows(ledger, "SELECT window_end FROM usage_lines")) >= 3,
               timeout=40)
    job.kill()
    job.wait()
    node.gpus.remove(job.pid)
    time.sleep(1.0)  # the exporter's last sample of the job
    # What the engine bills: the counter's growth from the moment billing began.
    [(start,)] = ledger_rows(ledger, "SELECT value FROM meta WHERE key = 'billing_start'")
    [before] = promql(prometheus.url, series, at=float(start))
    truth = gpu_seconds([node], {alice.name})[alice.name] - Decimal(before["value"][1])

    def billed() -> Decimal:
        return sum((Decimal(s) for (s,) in ledger_rows(
            ledger, "SELECT gpu_seconds FROM usage_lines")), Decimal(0))
    wait_until(lambda: billed() == truth, timeout=30)
    first = ledger_rows(ledger, "SELECT MIN(window_end) FROM windows")[0][0]
    assert ledger_rows(ledger, f"SELECT account FROM usage_lines WHERE window_end = {first}"
                       ) == [("gat-first",)]
    assert ledger_rows(ledger, "SELECT DISTINCT account FROM usage_lines") == [("gat-first",)]
    assert ledger_rows(ledger, "SELECT name FROM accounts") == [("gat-first",)]
    [(balance,)] = ledger_rows(ledger, "SELECT balance FROM accounts")
    costs = sum((Decimal(c) for (c,) in ledger_rows(ledger, "SELECT cost FROM usage_lines")),
                Decimal(0))
    assert costs > 0 and Decimal(balance) == Decimal(5) - costs

    month = time.strftime("%Y-%m", time.gmtime(first))
    statement = subprocess.run(
        [sys.executable, "-m", "billing_engine", "--config", str(config), "statement",
         "--account", "gat-first", "--month", month], capture_output=True, text=True,
        timeout=60, check=True).stdout
    rows = list(csv.reader(io.StringIO(statement)))
    assert ["member", "", alice.name, str(costs), "usage charged to gat-first", ""] in rows
    [closing] = [r for r in rows if r[0] == "closing"]
    assert Decimal(closing[3]) == Decimal(balance)
