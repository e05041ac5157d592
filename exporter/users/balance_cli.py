"""gpuacct-balance: your balance, tier, what is enforced on you and why, and how long the
money lasts at your current spending.

  gpuacct-balance              the full picture
  gpuacct-balance --greeting   one or two lines for the login hook; silent when all is well
  gpuacct-balance --json       the same as JSON
  gpuacct-balance --print-hook the /etc/profile.d hook, to install it
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

from exporter.enforce.hookfile import read_hook
from gpuacct.build import add_version_argument
from gpuacct.cli_common import add_config_argument, load_or_exit
from gpuacct.promql import Prometheus, PrometheusUnavailable
from gpuacct.tiers import HEALTHY, SEVERITY, Tier, tier_of
from gpuacct.wording import duration, enforced


@dataclass
class Status:
    user: str
    account: str | None = None  # the account charged, when it is not the user's own
    balance: str | None = None
    tier: Tier | None = None
    thresholds: dict[str, str] = field(default_factory=dict)
    cost_per_hour: str | None = None
    seconds_left: float | None = None
    enforcement: dict[str, Any] | None = None
    problem: str | None = None  # why the numbers are missing
    # This week (from Monday 00:00 UTC) as billed: gpu_seconds, gpu_idle_seconds, cost,
    # idle_cost, from gpuacct_account_week_*.
    week: dict[str, str] = field(default_factory=dict)


def _one(prometheus: Prometheus, query: str) -> list[tuple[dict[str, str], Decimal]]:
    return [(s.labels, s.value) for s in prometheus.instant(query, time.time())]


def gather(user: str, prometheus: Prometheus, enforcement: dict[str, Any] | None) -> Status:
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
    status.balance = f"{value:.2f}"
    status.thresholds = {labels["tier"]: f"{v:.2f}" for labels, v in tiers}
    status.tier = tier_of(value, {labels["tier"]: v for labels, v in tiers})
    status.cost_per_hour = f"{rate[0][1]:.2f}" if rate else "0.00"
    status.seconds_left = float(left[0][1]) if left else None
    status.week = {labels["__name__"].removeprefix("gpuacct_account_week_"): str(v)
                   for labels, v in week}
    return status


def week_line(week: dict[str, str]) -> str | None:
    """This week's GPU time, the idle-held part of it and what that cost."""
    if not week:
        return None
    gpu, idle = Decimal(week.get("gpu_seconds", 0)), Decimal(week.get("gpu_idle_seconds", 0))
    cost, idle_cost = Decimal(week.get("cost", 0)), Decimal(week.get("idle_cost", 0))
    share = f" ({idle / gpu:.0%})" if gpu else ""
    return (f"{gpu / 3600:.2f} GPU-hours, {idle / 3600:.2f} of them idle-held{share}; "
            f"idle cost {idle_cost:.2f} of {cost:.2f}")


def render(status: Status) -> str:
    out = [f"gpuacct balance for {status.user}"]
    if status.balance is None:
        out.append(f"  balance      {status.problem}")
    else:
        limits = ", ".join(f"{t} below {status.thresholds[t]}" for t in reversed(SEVERITY)
                           if t in status.thresholds)
        if status.account:
            out.append(f"  account      {status.account} (its balance and tier are yours)")
        out.append(f"  balance      {status.balance}  (tier: {status.tier}; {limits})")
        spending = f"  spending     {status.cost_per_hour} an hour over the last hour"
        if status.seconds_left is not None:
            spending += f"; at that rate it runs out in {duration(status.seconds_left)}"
        out.append(spending)
        week = week_line(status.week)
        if week:
            out.append(f"  this week    {week}")
    what = enforced(status.enforcement)
    out.append(f"  enforced     {'; '.join(what) if what else 'nothing'}")
    for reason in (status.enforcement or {}).get("reasons", []):
        out.append(f"  why          {reason.get('summary') or reason.get('alert')}")
    return "\n".join(out)


def greeting(status: Status) -> str:
    """Silent when all is well; otherwise what the user should know at login."""
    what = enforced(status.enforcement)
    if status.tier in (None, HEALTHY) and not what:
        return ""
    head = f"gpuacct: balance {status.balance}" if status.balance else "gpuacct:"
    if status.tier and status.tier != HEALTHY:
        head += f" ({status.tier})"
    if status.seconds_left is not None:
        head += f", runs out in about {duration(status.seconds_left)}"
    lines = [head + (f": {'; '.join(what)}" if what else ". Please recharge soon.")]
    lines += [f"  {r.get('summary')}" for r in (status.enforcement or {}).get("reasons", [])
              if r.get("summary")][:3]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuacct-balance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    add_config_argument(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--greeting", action="store_true", help="short, for the login hook")
    mode.add_argument("--json", action="store_true", help="machine-readable")
    mode.add_argument("--print-hook", action="store_true", help="print the profile.d hook")
    parser.add_argument("--user", help="another user's balance (root only)")
    args = parser.parse_args(argv)
    if args.print_hook:
        print(resources.files("exporter").joinpath("profile.d/gpuacct.sh").read_text(), end="")
        return 0
    me = pwd.getpwuid(os.getuid()).pw_name
    if args.user and args.user != me and os.getuid() != 0:
        print("gpuacct-balance: only root may look at another user's balance", file=sys.stderr)
        return 2
    settings = load_or_exit(args.config)
    user = args.user or me
    prometheus = Prometheus(settings.client.prometheus_url, settings.client.timeout_seconds,
                            settings.tls_client_config.context())
    hook = read_hook(settings.exporter.actuator.hook_dir, user)
    status = gather(user, prometheus, hook.model_dump(mode="json") if hook else None)
    if args.json:
        print(json.dumps(asdict(status), indent=2))
    elif args.greeting:
        text = greeting(status)
        if text:
            print(text)
    else:
        print(render(status))
    return 0
