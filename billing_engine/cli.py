"""gpuacct-billing: bill usage from Prometheus into the ledger, and operate on the ledger.

  gpuacct-billing run                          bill every minute; /metrics on --web.listen-address
  gpuacct-billing balances                     every account, its balance and tier
  gpuacct-billing recharge ACCOUNT AMOUNT [--reason TEXT] [--key KEY]
  gpuacct-billing adjust ACCOUNT AMOUNT --reason TEXT [--key KEY]
  gpuacct-billing account open NAME [--group] [--owner USER] [--balance AMOUNT]
  gpuacct-billing account show NAME            balance, status, owner, members and their month
  gpuacct-billing account {freeze,thaw,close,reopen} NAME [--reason TEXT]
  gpuacct-billing account owner NAME USER
  gpuacct-billing account add-member NAME USER [--move] | remove-member NAME USER
  gpuacct-billing account limit NAME USER {AMOUNT,none}   a member's monthly spending limit
  gpuacct-billing statement --account NAME --month YYYY-MM [--format csv|html|pdf] [--output F]
  gpuacct-billing audit [--since DATE]         who changed what, newest first
  gpuacct-billing export {usage,transactions,waste} --from DATE --to DATE [--output FILE]
  gpuacct-billing backup FILE                  a consistent copy of the ledger, safe while running

Every change names its actor in the ledger: --actor, else the login that ran the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import get_args

from billing_engine import accounts_cli as accounts
from billing_engine.engine import Engine
from billing_engine.influx import make_sink
from billing_engine.job_tracker import JobTracker
from billing_engine.metrics import build_registry
from billing_engine.pricing import MICRO
from gpuacct.cli_common import (
    command_or_usage,
    load_or_exit,
    service_parser,
    stop_on_signals,
)
from gpuacct.config import BillingSettings
from gpuacct.limits import limits_above
from gpuacct.money import parse_amount
from gpuacct.promql import PrometheusReplicas, PrometheusUnavailable, Querier
from gpuacct.service import Service, start
from gpuacct.store import places
from gpuacct.tiers import account_tier
from jobstore.store import JobStore
from ledger import (
    Export,
    Ledger,
    LedgerError,
    Posting,
    ReadOnlyLedger,
    SchemaError,
    open_reader,
)
from ledger import exists as ledger_exists
from reports import export

CLUSTER_GPUS = "count(gpuacct_gpu_info)"  # GPUs and MIG instances: what the limits count


def _parser() -> argparse.ArgumentParser:
    parser, sub = service_parser("gpuacct-billing", __doc__,
                                 "bill continuously and serve /metrics", "/metrics")
    sub.add_parser("balances", help="every account with its balance and tier")
    for name, text in (("recharge", "add money to an account"),
                       ("adjust", "correct a balance up or down, with a reason")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("account", help="the account (a user's own is named after them)")
        cmd.add_argument("amount")
        cmd.add_argument("--reason", required=name == "adjust", default="",
                         help="why (kept in the ledger)")
        cmd.add_argument("--key", help="idempotency key: the same key is never applied twice")
    exp = sub.add_parser("export", help="CSV of usage lines, transactions or the weekly waste "
                         "report in a date range")
    exp.add_argument("what", choices=get_args(Export))
    exp.add_argument("--from", dest="start", required=True, metavar="DATE",
                     help="first day or time (UTC), e.g. 2026-11-01")
    exp.add_argument("--to", dest="end", required=True, metavar="DATE",
                     help="end, exclusive (UTC), e.g. 2026-12-01")
    exp.add_argument("--output", type=Path, help="file to write (default: standard output)")
    accounts.add_parsers(sub)
    backup = sub.add_parser("backup", help="a consistent copy of the ledger, safe while running")
    backup.add_argument("file", type=Path, help="the new file (an existing one is refused)")
    return parser


def _open_ledger(settings: BillingSettings) -> Ledger:
    if not ledger_exists(settings.ledger):
        raise SystemExit(f"gpuacct-billing: no ledger at {settings.ledger} "
                         "(start `gpuacct-billing run` first, or check billing.ledger)")
    try:
        return Ledger(settings.ledger)
    except SchemaError as exc:
        raise SystemExit(f"gpuacct-billing: {exc}") from None


def _open_reader(settings: BillingSettings) -> ReadOnlyLedger:
    """Read-only; a ledger of an older schema is migrated first, as any writer would."""
    _open_ledger(settings).close()
    return open_reader(settings.ledger)


def run(service: Service) -> int:
    settings, log, host, port = service.settings, service.log, service.host, service.port
    billing = settings.billing
    try:
        ledger = Ledger(billing.ledger)
    except SchemaError as exc:
        print(f"gpuacct-billing: {exc}", file=sys.stderr)
        return 1
    prometheus = PrometheusReplicas(billing.prometheus_url, billing.query_timeout_seconds,
                                    service.tls)
    jobs = None
    if billing.jobs is not None:
        jobs = JobTracker(JobStore(places.jobs(settings)), prometheus,
                          billing.jobs)
    engine = Engine(billing, ledger, prometheus, make_sink(settings.influxdb, service.tls),
                    jobs=jobs)
    warn_of_limits_above_the_cluster(billing, prometheus, log)
    try:
        server = service.metrics_server(build_registry(billing, engine), "gpuacct billing")
    except OSError as exc:
        print(f"gpuacct-billing: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    log.info("billing %ss windows from %s into %s%s; /metrics on %s:%d",
             billing.window_seconds, ", ".join(billing.prometheus_url), billing.ledger,
             " (TRIAL MODE: nothing is debited)" if billing.trial_mode else "", host, port)
    engine.run(stop_on_signals())
    server.shutdown()
    ledger.close()
    if jobs is not None:
        jobs.store.close()
    log.info("stopped")
    return 0


def warn_of_limits_above_the_cluster(billing: BillingSettings, prometheus: Querier,
                                     log: logging.Logger) -> None:
    """A GPU limit above the cluster's GPU count is allowed (the cluster may grow) but said."""
    if not limits_above(billing, 0):  # no GPU limit above 0 is set: nothing to compare
        return
    try:
        found = prometheus.instant(CLUSTER_GPUS, time.time())
    except PrometheusUnavailable as exc:
        log.warning("cannot compare the GPU limits with the cluster's GPUs: %s", exc)
        return
    if found:
        for problem in limits_above(billing, int(found[0].value)):
            log.warning("%s", problem)


def balances(billing: BillingSettings) -> int:
    ledger = _open_reader(billing)
    print(f"{'account':<24} {'kind':<10} {'status':<7} {'balance':>16}  tier")
    for a in ledger.accounts(cost_since=time.time()):
        # Exact, as the ledger holds it: six decimals on every line.
        print(f"{a.name:<24} {a.kind:<10} {a.status:<7} {a.balance.quantize(MICRO):>16}  "
              f"{account_tier(billing, a.name, a.balance)}")
    return 0


def post(billing: BillingSettings, kind: Posting, account: str, amount_text: str, reason: str,
         key: str | None, actor: str) -> int:
    try:
        amount = parse_amount(amount_text, billing.amount_decimals, billing.max_amount,
                              negative_allowed=kind == "adjustment")
    except ValueError as exc:
        print(f"gpuacct-billing: {kind} refused: {exc}", file=sys.stderr)
        return 2
    if kind == "adjustment" and not reason.strip():
        print("gpuacct-billing: adjustment refused: a reason is required", file=sys.stderr)
        return 2
    ledger = _open_ledger(billing)
    try:
        balance = ledger.post(account, kind, amount, time.time(),
                              key or f"{kind}:{uuid.uuid4()}", reason.strip(), actor=actor)
    except LedgerError as exc:
        print(f"gpuacct-billing: {kind} refused: {exc}", file=sys.stderr)
        return 2
    print(f"{account}: {kind} {amount:+} -> balance {balance}")
    return 0


def backup(billing: BillingSettings, dest: Path) -> int:
    ledger = _open_ledger(billing)
    try:
        ledger.backup(dest)
    except LedgerError as exc:
        print(f"gpuacct-billing: backup refused: {exc}", file=sys.stderr)
        return 2
    finally:
        ledger.close()
    print(f"ledger {billing.ledger} copied to {dest} ({dest.stat().st_size} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = command_or_usage(parser, args)
    if command == "run":
        return run(start("gpuacct-billing", args, lambda s: s.billing.listen_address))
    settings = load_or_exit(args.config)
    if command == "balances":
        return balances(settings.billing)
    if command == "backup":
        return backup(settings.billing, args.file)
    if command in ("recharge", "adjust"):
        kind: Posting = "recharge" if command == "recharge" else "adjustment"
        return post(settings.billing, kind, args.account, args.amount, args.reason, args.key,
                    accounts.actor(args))
    if command in accounts.COMMANDS:
        try:
            return accounts.main(command, args, settings.billing, _open_ledger)
        except (LedgerError, ValueError, RuntimeError) as exc:
            print(f"gpuacct-billing {command}: {exc}", file=sys.stderr)
            return 2
    try:
        return export.write(_open_reader(settings.billing), args.what, args.start, args.end,
                            args.output)
    except ValueError as exc:
        print(f"gpuacct-billing: export refused: {exc}", file=sys.stderr)
        return 2
