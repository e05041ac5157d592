"""The billing engine's /metrics, read from the ledger at every scrape.

    gpuacct_account_balance{user="alice"} 87.25
    gpuacct_account_threshold{tier="warning",user="alice"} 100.0
    gpuacct_billing_last_window_end_timestamp_seconds 1.7638e+09
    gpuacct_billing_outbox_backlog 0.0
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from billing_engine.engine import Engine
from billing_engine.ledger import outbox_backlog
from gpuacct.config import BillingSettings

TIERS = ("warning", "limited", "exhausted")


def thresholds(settings: BillingSettings, user: str) -> dict[str, Decimal]:
    base = settings.thresholds
    override = settings.user_thresholds.get(user)
    result = {}
    for tier in TIERS:
        value = getattr(override, tier) if override is not None else None
        result[tier] = value if value is not None else getattr(base, tier)
    return result


class BillingCollector(Collector):
    def __init__(self, settings: BillingSettings, engine: Engine | None) -> None:
        self.settings = settings
        self.engine = engine

    def _read(self) -> tuple[list[tuple[str, str, str]], int | None, int, str, int]:
        uri = f"file:{Path(self.settings.ledger).resolve()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            balances = db.execute("SELECT user, balance, charged FROM accounts ORDER BY user"
                                  ).fetchall()
            last = db.execute("SELECT MAX(window_end) FROM windows").fetchone()[0]
            backlog = outbox_backlog(db)
            row = db.execute("SELECT value FROM meta WHERE key = 'charged_total'").fetchone()
            windows = db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        finally:
            db.close()
        return balances, last, backlog, row[0] if row else "0", windows

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gpuacct_billing_ledger_up", "1 if the ledger could be read.")
        try:
            balances, last, backlog, charged, windows = self._read()
        except sqlite3.Error:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        balance = GaugeMetricFamily("gpuacct_account_balance", "Prepaid balance of an account.",
                                    labels=["user"])
        threshold = GaugeMetricFamily(
            "gpuacct_account_threshold", "Balance below which an account enters the tier.",
            labels=["user", "tier"])
        charged_by_user = CounterMetricFamily(
            "gpuacct_account_charged", "Money charged to an account for usage, ever.",
            labels=["user"])
        for user, amount, charged_so_far in balances:
            balance.add_metric([user], float(Decimal(amount)))
            charged_by_user.add_metric([user], float(Decimal(charged_so_far)))
            for tier, value in thresholds(self.settings, user).items():
                threshold.add_metric([user, tier], float(value))
        yield from (balance, threshold, charged_by_user)
        if last is not None:
            yield GaugeMetricFamily("gpuacct_billing_last_window_end_timestamp_seconds",
                                    "End of the latest billed window.", value=last)
        yield GaugeMetricFamily("gpuacct_billing_outbox_backlog",
                                "Cost points waiting to be written to InfluxDB.", value=backlog)
        yield CounterMetricFamily("gpuacct_billing_charged", "Money charged to accounts.",
                                  value=float(Decimal(charged)))
        yield CounterMetricFamily("gpuacct_billing_windows", "Windows billed.", value=windows)
        yield GaugeMetricFamily("gpuacct_billing_trial_mode", "1 if usage is priced but not "
                                "debited.", value=1 if self.settings.trial_mode else 0)
        if self.engine is not None:
            yield GaugeMetricFamily("gpuacct_billing_tick_duration_seconds",
                                    "How long the latest billing tick took.",
                                    value=self.engine.last_tick_seconds)
            yield GaugeMetricFamily("gpuacct_billing_last_tick_success",
                                    "1 if the latest billing tick worked.",
                                    value=1 if self.engine.last_tick_ok else 0)
            yield GaugeMetricFamily("gpuacct_billing_influxdb_up",
                                    "1 if the latest InfluxDB write worked.",
                                    value=1 if self.engine.influx_ok else 0)


def build_registry(settings: BillingSettings, engine: Engine | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(settings, engine))
    return registry
