"""Billing through a Prometheus HA pair and a long-term store: two real Prometheus replicas
scraping the same exporter, the engine switched between them every window, one of them away;
VictoriaMetrics fed by both through remote_write. Ledger = the exporter's counters, exactly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from gpuacct.promql import Prometheus, PrometheusReplicas, Sample
from tests.billing_engine.conftest import WINDOW, Rig, Totals, running, scrape_configs
from tests.billing_engine.test_billing import check_ledger, start_job, stop_job
from tests.fixtures.gpus import A100, RTX3090
from tests.fixtures.servers import Server, wait_for
from tests.fixtures.users import Processes, UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
Users = dict[str, UnixUser]


class EachWindowAnother(PrometheusReplicas):
    """The replicas in turn, one window each (the other where that one does not answer): the
    worst a load balancer or a querier switching replicas can do."""

    def instant(self, query: str, at: float) -> list[Sample]:
        self.current = int(at // WINDOW) % len(self.replicas)
        return super().instant(query, at)


def scraping(server: Server) -> Server:
    """The server, once it has scraped its targets (Prometheus applies targets 5 s after it
    starts)."""
    replica = Prometheus(server.url)
    wait_for(lambda: [s.value for s in replica.instant("up", time.time())] == [Decimal(1)],
             timeout=30, what=f"{server.url} to scrape the exporter")
    return server


@pytest.fixture
def replica(rig: Rig, start_prometheus: Callable[..., Server]) -> Server:
    """A second Prometheus scraping the rig's exporter as the first does."""
    second = start_prometheus(scrape_configs(rig.exporter), interval="500ms")
    scraping(rig.prometheus)  # both apply their targets meanwhile
    return scraping(second)


def wait_until_ledger_is(rig: Rig, expected: Totals, timeout: float = 30.0,
                         rounded: Decimal | None = None) -> None:
    def rounding(totals: Totals) -> Totals:
        return totals if rounded is None else {
            k: (g.quantize(rounded), c.quantize(rounded)) for k, (g, c) in totals.items()}
    seen: list[Totals] = []

    def reached() -> bool:
        seen[:] = [rounding(rig.ledger_totals())]
        return seen[0] == rounding(expected)
    try:
        wait_for(reached, timeout=timeout, what="the ledger to reach the counters")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: expected {expected}, ledger {seen[0]}") from None


def test_billing_switched_between_replicas_each_window_and_one_away_is_exact(
        rig: Rig, replica: Server, processes: Processes, test_users: Users) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    engine = rig.engine(EachWindowAnother, prometheus_url=[rig.prometheus.url, replica.url])
    with running(engine):
        a = start_job(rig, processes, alice, "ha-a", gpu=0)
        b = start_job(rig, processes, bob, "ha-b", gpu=1)
        time.sleep(2 * WINDOW)
        replica.process.stop()  # three windows: its turns go to the other replica
        time.sleep(3 * WINDOW + 0.5)
        replica.process.start().wait_ready()
        scraping(replica)
        time.sleep(2 * WINDOW)
    # The engine away too while the replica crashes (no staleness markers): when both are back,
    # the engine bills the missed windows in turn from both, and the replica's reads of its gap
    # are older than the other's: below the cursors, of the same counters.
    assert replica.process.popen is not None
    os.killpg(replica.process.popen.pid, signal.SIGKILL)
    replica.process.stop()
    time.sleep(3 * WINDOW + 0.5)
    replica.process.start().wait_ready()
    scraping(replica)
    with running(engine):
        time.sleep(2 * WINDOW)
        stop_job(rig, a)
        stop_job(rig, b)
        truth = rig.wait_until_billed()
    assert truth[(bob.name, "ha-b", RTX3090)][0] > 10
    assert engine.series_behind > 0  # the lagging reads happened, and were not billed as resets
    check_ledger(rig)


def test_a_real_counter_reset_is_billed_in_full_through_switching_replicas(
        rig: Rig, replica: Server, processes: Processes, test_users: Users,
        tmp_path: Path) -> None:
    bob = test_users["bob"]
    engine = rig.engine(EachWindowAnother, prometheus_url=[rig.prometheus.url, replica.url])
    with running(engine):
        job = start_job(rig, processes, bob, "reset", gpu=1)
        time.sleep(4 * WINDOW)
        stop_job(rig, job)
        before = rig.wait_until_billed()
        # The exporter starts again without its state: the same series begin again at 0.
        rig.exporter.process.stop()
        (tmp_path / "exporter-state.json").unlink()
        rig.exporter.restart()
        job = start_job(rig, processes, bob, "reset", gpu=1)
        time.sleep(1.5 * WINDOW)
        stop_job(rig, job)
        time.sleep(1.0)
        after = rig.exporter_totals()
        key = (bob.name, "reset", RTX3090)
        assert Decimal(0) < after[key][0] < before[key][0]  # a drop, not a lag
        wait_until_ledger_is(rig, {k: (before.get(k, (Decimal(0),) * 2)[0] + g,
                                       before.get(k, (Decimal(0),) * 2)[1] + c)
                                   for k, (g, c) in after.items()} | {
            k: v for k, v in before.items() if k not in after})
    check_ledger(rig)


def test_victoria_metrics_fed_by_both_replicas_is_billed_exactly(
        rig: Rig, start_prometheus: Callable[..., Server],
        start_victoria_metrics: Callable[[], Server], processes: Processes,
        test_users: Users) -> None:
    alice = test_users["alice"]
    store = start_victoria_metrics()
    write = {"remote_write": [{"url": f"{store.url}/api/v1/write",
                               "queue_config": {"batch_send_deadline": "200ms"}}]}
    for name in ("a", "b"):  # each replica's samples reach the store under its own label
        scraping(start_prometheus(scrape_configs(rig.exporter), interval="500ms", extra=write,
                                  external_labels={"replica": name}))
    with running(rig.engine(prometheus_url=store.url)):
        job = start_job(rig, processes, alice, "long-term", gpu=0)
        time.sleep(4 * WINDOW)
        stop_job(rig, job)
        time.sleep(1.0)
        truth = rig.exporter_totals()
        # VictoriaMetrics keeps some 12 significant digits of a value (its compression); the
        # ledger's sums telescope to the last value read, so they are the counters' to that.
        wait_until_ledger_is(rig, truth, rounded=Decimal("1e-6"))
    assert truth[(alice.name, "long-term", A100)][0] > 5
    check_ledger(rig)
