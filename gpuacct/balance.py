"""A user's balance as Prometheus has it: the account charged, its balance and tier, the
spending rate and this week's GPU time. Asked by `gpuacct-balance` directly, or by the control
plane for a user whose node daemon forwards the ask (`gpuacct balance` on a node that may not
reach Prometheus)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from gpuacct.money import shown
from gpuacct.promql import PrometheusUnavailable, Querier
from gpuacct.tiers import Tier, tier_of


class Status(BaseModel):
    user: str
    account: str | None = None  # the account charged, when it is not the user's own
    balance: str | None = None
    tier: Tier | None = None
    thresholds: dict[str, str] = {}
    cost_per_hour: str | None = None
    seconds_left: float | None = None
    enforcement: dict[str, Any] | None = None
    problem: str | None = None  # why the numbers are missing
    # This week (from Monday 00:00 UTC) as billed: gpu_seconds, gpu_idle_seconds, cost,
    # idle_cost, from gpuacct_account_week_*.
    week: dict[str, str] = {}


def _one(prometheus: Querier, query: str) -> list[tuple[dict[str, str], Decimal]]:
    return [(s.labels, s.value) for s in prometheus.instant(query, time.time())]


def gather(user: str, prometheus: Querier, enforcement: dict[str, Any] | None) -> Status:
    status = Status(user=user, enforcement=enforcement)
    selector = f'{{user="{user}"}}'
    try:
        balance = _one(prometheus, f"min by (account) (gpuacct_account_balance{selector})")
        tiers = _one(prometheus, f"max by (tier) (gpuacct_account_threshold{selector})")
        rate = _one(prometheus, f"max(user:gpuacct_cost_per_hour:rate1h{selector})")
        left = _one(prometheus, f"min(user:gpuacct_seconds_until_exhausted:rate1h{selector})")
        week = _one(prometheus, 'max by (__name__) ({__name__=~"gpuacct_account_week_'
                    f'(gpu_seconds|gpu_idle_seconds|cost|idle_cost)",user="{user}"}})')
    except PrometheusUnavailable as exc:
        status.problem = f"balance unknown: {exc}"
        return status
    if not balance:
        status.problem = "no account yet: it opens with your first billed minute"
        return status
    labels, value = balance[0]
    status.account = labels.get("account") if labels.get("account") != user else None
    status.balance = shown(value)
    status.thresholds = {labels["tier"]: shown(v) for labels, v in tiers}
    status.tier = tier_of(value, {labels["tier"]: v for labels, v in tiers})
    status.cost_per_hour = shown(rate[0][1] if rate else Decimal(0))
    status.seconds_left = float(left[0][1]) if left else None
    status.week = {labels["__name__"].removeprefix("gpuacct_account_week_"): str(v)
                   for labels, v in week}
    return status
