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
import socket
import sys
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from exporter.enforce.hookfile import read_hook
from gpuacct.allocation import Answer
from gpuacct.balance import Status, gather
from gpuacct.build import add_version_argument
from gpuacct.cli_common import add_config_argument, load_or_exit
from gpuacct.money import shown
from gpuacct.promql import Prometheus
from gpuacct.tiers import HEALTHY, SEVERITY
from gpuacct.wording import enforced, runs_out

SOCKET_ENV = "GPUACCT_SOCKET"  # the node daemon's socket, where the config does not say


def week_line(week: dict[str, str]) -> str | None:
    """This week's GPU time, the idle-held part of it and what that cost."""
    if not week:
        return None
    gpu, idle = Decimal(week.get("gpu_seconds", 0)), Decimal(week.get("gpu_idle_seconds", 0))
    cost, idle_cost = Decimal(week.get("cost", 0)), Decimal(week.get("idle_cost", 0))
    share = f" ({idle / gpu:.0%})" if gpu else ""
    return (f"{gpu / 3600:.2f} GPU-hours, {idle / 3600:.2f} of them idle-held{share}; "
            f"idle cost {shown(idle_cost)} of {shown(cost)}")


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
            spending += f"; at that rate it {runs_out(status.seconds_left)}"
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
        head += f", {runs_out(status.seconds_left, 'about ')}"
    lines = [head + (f": {'; '.join(what)}" if what else ". Please recharge soon.")]
    lines += [f"  {r.get('summary')}" for r in (status.enforcement or {}).get("reasons", [])
              if r.get("summary")][:3]
    return "\n".join(lines)


def daemon_reply(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One JSON line to this node's daemon, its JSON line back (OSError, ValueError)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline(1 << 20) or b"{}")
    return reply


def from_node(path: Path, timeout: float = 10.0) -> Status | None:
    """The caller's balance as the control plane has it, asked through this node's daemon
    (which says who asks, and reaches the control plane where the node may not reach
    Prometheus); None where there is no daemon or it cannot tell."""
    try:
        reply = daemon_reply(path, {"op": "balance"}, timeout)
        return Answer.model_validate(reply["answer"]).balance
    except (OSError, ValueError, KeyError, TypeError):  # ValidationError is a ValueError
        return None


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
    hook = read_hook(settings.exporter.actuator.hook_dir, user)
    daemon = os.environ.get(SOCKET_ENV) or settings.exporter.actuator.user_socket
    status = from_node(Path(daemon)) if daemon and user == me else None
    if status is None:  # no daemon here, or it cannot tell: Prometheus, if this host reaches it
        prometheus = Prometheus(settings.client.prometheus_url, settings.client.timeout_seconds,
                                settings.tls_client_config.context())
        status = gather(user, prometheus, None)
    status.enforcement = hook.model_dump(mode="json") if hook else None
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    elif args.greeting:
        text = greeting(status)
        if text:
            print(text)
    else:
        print(render(status))
    return 0
