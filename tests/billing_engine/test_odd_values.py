"""A series whose value no counter can hold (NaN, infinite, negative), as a real Prometheus
serves it, is left out of billing; everyone else is billed as usual and exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from billing_engine.engine import Engine
from gpuacct.config import settings_from_mapping
from gpuacct.promql import Prometheus
from gpuacct.store import Target
from ledger import Ledger
from tests.fixtures.ledger import sql
from tests.fixtures.servers import Server, promql, wait_for

pytestmark = [pytest.mark.integration]


class Counters:
    """A scrape target whose counter values the test sets."""

    def __init__(self) -> None:
        self.values = {"nan": "NaN", "good": "10", "inf": "+Inf", "negative": "-5"}

    def text(self) -> str:
        lines = ["# TYPE gpuacct_job_gpu_seconds counter"]
        for user, value in self.values.items():
            lines.append(f'gpuacct_job_gpu_seconds_total{{user="{user}",job="j",'
                         f'gpu_model="NVIDIA A100-SXM4-80GB"}} {value}')
        return "\n".join(lines) + "\n"


@pytest.fixture
def counters() -> Iterator[tuple[Counters, str]]:
    state = Counters()

    class Target(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(state.text().encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"127.0.0.1:{server.server_port}"
    server.shutdown()


def billed(ledger: Ledger) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for user, seconds in sql(ledger).execute('SELECT "user", gpu_seconds FROM usage_lines'):
        totals[user] = totals.get(user, Decimal(0)) + Decimal(seconds)
    return totals


def test_odd_values_are_left_out_and_the_rest_is_billed(
        counters: tuple[Counters, str], start_prometheus: Callable[..., Server],
        store_target: Target, caplog: pytest.LogCaptureFixture) -> None:
    state, target = counters
    prometheus = start_prometheus([{"job_name": "nodes", "honor_labels": True,
                                    "static_configs": [{"targets": [target]}]}], "500ms")
    wait_for(lambda: len(promql(prometheus.url, "gpuacct_job_gpu_seconds_total")) == 4)
    settings = settings_from_mapping({"billing": {
        "ledger": str(store_target), "prometheus_url": prometheus.url,
        "window_seconds": 2, "settle_seconds": 1.2}}).billing
    ledger = Ledger(settings.ledger)
    engine = Engine(settings, ledger, Prometheus(prometheus.url), None)

    def settled_since(t: float) -> None:
        """Until the latest settled window ends after `t`."""
        wait_for(lambda: engine.due_window(time.time()) >= t, timeout=10)

    def bill_after(values: dict[str, str]) -> None:
        state.values.update(values)
        time.sleep(1.0)  # two scrapes
        settled_since(time.time())
        engine.tick()
        assert engine.last_tick_ok

    # Billing begins where Prometheus has all four series: what they hold then is not billed.
    wait_for(lambda: len(promql(prometheus.url, "gpuacct_job_gpu_seconds_total",
                                engine.due_window(time.time()))) == 4)
    engine.tick()
    bill_after({"good": "25"})
    assert billed(ledger) == {"good": Decimal(15)}
    bill_after({"nan": "7", "good": "30"})  # first seen finite: baselined, as a new series
    bill_after({"nan": "9", "negative": "-1"})
    assert billed(ledger) == {"good": Decimal(20), "nan": Decimal(2)}
    assert ledger.invariant_violations() == []
    assert "are not billed: their value is not a finite, non-negative number" in caplog.text
