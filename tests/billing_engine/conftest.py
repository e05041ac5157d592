"""A billing rig: the exporter on fake GPUs, real Prometheus and InfluxDB, windows of seconds."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from billing_engine.engine import Engine
from billing_engine.influx import make_sink
from gpuacct import store
from gpuacct.config import Settings, settings_from_mapping
from gpuacct.promql import PrometheusReplicas, Querier
from gpuacct.store import Target
from ledger import Ledger
from stack.servers import influx_query
from tests.fixtures.exporter import Exporter
from tests.fixtures.gpus import RTX3090, FakeGpus, device
from tests.fixtures.ledger import sql
from tests.fixtures.servers import Server, wait_for

WINDOW = 2
# GPU-seconds per (user, job, gpu_model); CPU core-seconds per (user, job) under model "" (the
# ledger puts a job's CPU time on one of its GPU lines, so only these sums can be compared).
Totals = dict[tuple[str, str, str], tuple[Decimal, Decimal]]


def scrape_configs(exporter: Exporter) -> list[dict[str, Any]]:
    """How every Prometheus of the rig scrapes its exporter."""
    return [{"job_name": "gpuacct-exporter", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}]


@dataclass
class Rig:
    gpus: FakeGpus
    exporter: Exporter
    prometheus: Server
    influxdb: Server
    config: dict[str, Any]
    config_path: Path
    users: set[str]

    @property
    def settings(self) -> Settings:
        return settings_from_mapping(self.config)

    @property
    def ledger_path(self) -> Target:
        target: str = self.config["billing"]["ledger"]
        return target if store.is_url(target) else Path(target)

    def engine(self, querier: Callable[[list[str]], Querier] = PrometheusReplicas,
               **billing: Any) -> Engine:
        config = json.loads(json.dumps(self.config))
        config["billing"].update(billing)
        settings = settings_from_mapping(config)
        return Engine(settings.billing, Ledger(settings.billing.ledger),
                      querier(settings.billing.prometheus_url), make_sink(settings.influxdb))


    def exporter_totals(self) -> Totals:
        totals: dict[tuple[str, str, str], list[Decimal]] = defaultdict(
            lambda: [Decimal(0), Decimal(0)])
        for family in text_string_to_metric_families(self.exporter.scrape()):
            for s in family.samples:
                if s.labels.get("user") not in self.users:
                    continue
                if s.name == "gpuacct_job_gpu_seconds_total":
                    key = (s.labels["user"], s.labels["job"], s.labels["gpu_model"])
                    totals[key][0] += Decimal(repr(s.value))
                elif s.name == "gpuacct_job_cpu_seconds_total":
                    totals[(s.labels["user"], s.labels["job"], "")][1] += Decimal(repr(s.value))
        return {k: (g, c) for k, (g, c) in totals.items() if g or c}

    def ledger_totals(self) -> Totals:
        ledger = Ledger(self.ledger_path)
        totals: dict[tuple[str, str, str], list[Decimal]] = defaultdict(
            lambda: [Decimal(0), Decimal(0)])
        try:
            for user, job, model, gpu, cpu in sql(ledger).execute(
                    'SELECT "user", job, gpu_model, gpu_seconds, cpu_core_seconds '
                    "FROM usage_lines"):
                if user in self.users:
                    totals[(user, job, model)][0] += Decimal(gpu)
                    totals[(user, job, "")][1] += Decimal(cpu)
        finally:
            ledger.close()
        return {k: (g, c) for k, (g, c) in totals.items() if g or c}

    def wait_until_billed(self, timeout: float = 30.0) -> Totals:
        """Once usage has stopped: the exporter's totals, when the ledger has reached them."""
        time.sleep(1.0)  # the last samples reach the exporter's counters and Prometheus
        truth = self.exporter_totals()
        seen: list[Totals] = []

        def reached() -> bool:
            seen[:] = [self.ledger_totals()]
            return seen[0] == truth
        try:
            wait_for(reached, timeout=timeout, what="the ledger to reach the exporter's totals")
        except AssertionError as exc:
            differ = {k: (truth.get(k), seen[0].get(k)) for k in truth.keys() | seen[0].keys()
                      if truth.get(k) != seen[0].get(k)} if seen else {}
            raise AssertionError(f"{exc}; (exporter, ledger) where they differ: {differ}"
                                 ) from None
        return truth

    def influx_sums(self) -> dict[str, int]:
        body = json.loads(influx_query(
            self.influxdb.url, 'SELECT SUM("cost_micros") FROM "gpuacct_usage" GROUP BY "user"',
            "gpuacct"))
        return {s["tags"]["user"]: int(s["values"][0][1])
                for s in body["results"][0].get("series", [])}


def make_rig(start_exporter: Callable[..., Exporter], start_prometheus: Callable[..., Server],
             influxdb: Server, tmp_path: Path, test_users: dict[str, Any],
             ledger: Target) -> Rig:
    gpus = FakeGpus([device(0), device(1, name=RTX3090)], path=tmp_path / "gpus.json")
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.25, "state_file": str(tmp_path / "exporter-state.json"),
        "idle": {"after_seconds": 1},  # only a test's 0% processes: the rest run at 50%
        "nvml": {"backend": "fake", "fake_file": str(gpus.path)}}})
    prometheus = start_prometheus(scrape_configs(exporter), interval="500ms")
    influx_query(influxdb.url, 'CREATE DATABASE "gpuacct"', method="POST")
    config = {
        "billing": {"ledger": str(ledger),
                    "prometheus_url": prometheus.url, "window_seconds": WINDOW,
                    "settle_seconds": 1.2, "lease_seconds": 2},
        "influxdb": {"version": 1, "url": influxdb.url, "database": "gpuacct"},
    }
    config_path = tmp_path / "gpuacct.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return Rig(gpus, exporter, prometheus, influxdb, config, config_path,
               {u.name for u in test_users.values()})


@pytest.fixture
def rig(start_exporter: Callable[..., Exporter], start_prometheus: Callable[..., Server],
        influxdb: Server, tmp_path: Path, test_users: dict[str, Any],
        store_target: Target) -> Rig:
    """The rig with its ledger in a SQLite file, then in PostgreSQL (each test runs on both)."""
    return make_rig(start_exporter, start_prometheus, influxdb, tmp_path, test_users,
                    store_target)


@contextmanager
def running(engine: Engine) -> Iterator[Engine]:
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        stop.set()
        thread.join(timeout=15)
