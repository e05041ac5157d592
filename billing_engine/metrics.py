"""The billing engine's /metrics, read from the ledger at every scrape.

    gpuacct_account_balance{account="vision-lab",user="alice"} 87.25   (the account charged)
    gpuacct_account_threshold{account="vision-lab",tier="warning",user="alice"} 25.0
    gpuacct_ledger_account_balance{account="vision-lab",kind="group",status="open"} 87.25
    gpuacct_member_month_cost{account="vision-lab",user="bob"} 12.5
    gpuacct_member_monthly_limit{account="vision-lab",user="bob"} 50.0
    gpuacct_limit{resource="gpus",user="alice"} 4.0
    gpuacct_group_limit{group="vision-lab",resource="gpus"} 8.0
    gpuacct_group_member{group="vision-lab",user="alice"} 1.0
    gpuacct_billing_last_window_end_timestamp_seconds 1.7638e+09
    gpuacct_billing_outbox_backlog 0.0
    gpuacct_account_week_gpu_idle_seconds{user="alice"} 5400.0   (this week, from Monday UTC)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from billing_engine.engine import Engine
from gpuacct.config import BillingSettings
from gpuacct.limits import GroupMembers, set_limits, usage_limits
from gpuacct.periods import week_start
from gpuacct.tiers import thresholds
from ledger import (
    LedgerReader,
    LedgerUnavailable,
    MetricsSnapshot,
    ReadOnlyLedger,
    SchemaError,
)

# Each user's week so far: gpuacct_account_week_<name>, from the ledger's weekly sums.
WEEK_GAUGES = (("gpu_seconds", "GPU seconds billed"),
               ("gpu_idle_seconds", "Of the GPU seconds, those idle-held"),
               ("cost", "Usage cost"), ("idle_cost", "Cost of the idle-held GPU seconds"))


class BillingCollector(Collector):
    def __init__(self, settings: BillingSettings, engine: Engine | None,
                 ledger: LedgerReader | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.ledger = ledger or ReadOnlyLedger(settings.ledger)
        self.members = GroupMembers(settings.group_limits, "billing.group_limits")

    def _read(self) -> MetricsSnapshot | None:
        try:
            return self.ledger.metrics_snapshot()
        except (LedgerUnavailable, SchemaError):
            return None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gpuacct_billing_ledger_up", "1 if the ledger could be read.")
        snapshot = self._read()
        if snapshot is None:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._users(snapshot)
        yield from self._accounts(snapshot)
        yield from self._groups()
        yield from self._this_week()
        if snapshot.last_window is not None:
            yield GaugeMetricFamily("gpuacct_billing_last_window_end_timestamp_seconds",
                                    "End of the latest billed window.",
                                    value=snapshot.last_window)
        yield GaugeMetricFamily("gpuacct_billing_outbox_backlog",
                                "Cost points waiting to be written to InfluxDB.",
                                value=snapshot.outbox_backlog)
        yield CounterMetricFamily("gpuacct_billing_charged", "Money charged to accounts.",
                                  value=float(snapshot.charged_total))
        yield CounterMetricFamily("gpuacct_billing_windows", "Windows billed.",
                                  value=snapshot.windows)
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
            if self.engine.jobs is not None:
                jobs = GaugeMetricFamily(
                    "gpuacct_jobs", "Each node's jobs that are running, and those lost (their "
                    "node stopped answering while they ran).", labels=["node", "state"])
                for (node, state), count in sorted(self.engine.jobs.store.counts().items()):
                    jobs.add_metric([node, state], count)
                yield jobs
            yield CounterMetricFamily(
                "gpuacct_billing_series_behind", "Series read below their cursor from a "
                "Prometheus replica that lags; their usage is billed when it catches up.",
                value=self.engine.series_behind)

    def _users(self, snapshot: MetricsSnapshot) -> Iterator[Metric]:
        """Each user with the account they are charged to: its balance and thresholds decide
        their tier (a group account's apply to every member)."""
        labels = ["user", "account"]
        balance = GaugeMetricFamily(
            "gpuacct_account_balance", "Prepaid balance of the account the user is charged to.",
            labels=labels)
        threshold = GaugeMetricFamily(
            "gpuacct_account_threshold", "Balance below which the user's account enters the "
            "tier.", labels=[*labels, "tier"])
        charged = CounterMetricFamily(
            "gpuacct_account_charged", "Money charged for usage, ever, to the account the user "
            "is charged to.", labels=labels)
        frozen = GaugeMetricFamily("gpuacct_account_frozen", "1 if the user's account is "
                                   "frozen (no new GPU work).", labels=labels)
        unassigned = GaugeMetricFamily(
            "gpuacct_unassigned_user", "A user the ledger knew no account for, whose usage "
            "goes to the unassigned account (unknown_users: refuse).", labels=["user"])
        limit = GaugeMetricFamily(
            "gpuacct_limit", "The most of a resource the user may use at once, cluster-wide.",
            labels=["user", "resource"])
        accounts = {a.name: a for a in snapshot.accounts}
        for user, name in sorted(snapshot.charged_to.items()):
            account = accounts[name]
            if account.status == "closed":  # its users go to the unassigned account next window
                continue
            balance.add_metric([user, name], float(account.balance))
            charged.add_metric([user, name], float(account.charged))
            frozen.add_metric([user, name], 1 if account.status == "frozen" else 0)
            for tier, value in thresholds(self.settings, name).items():
                threshold.add_metric([user, name, tier], float(value))
            if account.kind == "unassigned":
                unassigned.add_metric([user], 1)
        # Limits hold from a user's first process: those the config names are published
        # before the ledger has billed them.
        for user in sorted(snapshot.charged_to.keys() | self.settings.user_limits.keys()):
            for resource, most in usage_limits(self.settings, user).items():
                limit.add_metric([user, resource], most)
        yield from (balance, threshold, charged, frozen, unassigned, limit)

    def _accounts(self, snapshot: MetricsSnapshot) -> Iterator[Metric]:
        balance = GaugeMetricFamily(
            "gpuacct_ledger_account_balance", "Balance of each account in the ledger (personal, "
            "group, unassigned).", labels=["account", "kind", "status"])
        for account in snapshot.accounts:
            balance.add_metric([account.name, account.kind, account.status],
                               float(account.balance))
        spent = GaugeMetricFamily(
            "gpuacct_member_month_cost", "What a member's usage charged to the account has "
            "cost this calendar month (UTC).", labels=["account", "user"])
        most = GaugeMetricFamily(
            "gpuacct_member_monthly_limit", "The most a member may spend of the account per "
            "calendar month; at it, their new GPU work is blocked.", labels=["account", "user"])
        for member in snapshot.members_this_month:
            spent.add_metric([member.account, member.user], float(member.cost))
            if member.limit is not None:
                most.add_metric([member.account, member.user], float(member.limit))
        yield from (balance, spent, most)

    def _groups(self) -> Iterator[Metric]:
        if not self.settings.group_limits:
            return
        limit = GaugeMetricFamily(
            "gpuacct_group_limit", "The most of a resource a Unix group's members may use at "
            "once together, cluster-wide.", labels=["group", "resource"])
        member = GaugeMetricFamily("gpuacct_group_member", "A user in a Unix group that has "
                                   "limits (from NSS).", labels=["group", "user"])
        for group, users in sorted(self.members().items()):
            for resource, most in set_limits(self.settings.group_limits[group]).items():
                limit.add_metric([group, resource], most)
            for user in sorted(users):
                member.add_metric([group, user], 1)
        yield from (limit, member)

    def _this_week(self) -> Iterator[Metric]:
        """The waste report's row of each user for the week so far."""
        week = week_start(time.time())
        families = [GaugeMetricFamily(f"gpuacct_account_week_{name}", f"{text} this week "
                                      "(since Monday 00:00 UTC), as billed.", labels=["user"])
                    for name, text in WEEK_GAUGES]
        for row in self.ledger.weekly_usage(week, week + 1):
            for family, (name, _) in zip(families, WEEK_GAUGES, strict=True):
                family.add_metric([row.user], float(getattr(row, name)))
        yield from families
        yield GaugeMetricFamily("gpuacct_account_week_start_timestamp_seconds",
                                "When this week's figures began (Monday 00:00 UTC).", value=week)


def build_registry(settings: BillingSettings, engine: Engine | None,
                   ledger: LedgerReader | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BillingCollector(settings, engine, ledger))
    return registry
