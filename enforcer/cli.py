"""gpuacct-enforcer: turn Alertmanager's enforcement alerts into a policy every node applies.

  gpuacct-enforcer run      take webhooks on --web.listen-address, push the policy to the nodes
                            (SIGHUP: read auth.webhook_token and auth.node_master_key again)
  gpuacct-enforcer policy   the desired policy now, per user
  gpuacct-enforcer audit [--user USER] [--limit N]   what was decided and what each node did
  gpuacct-enforcer preempt USER N --for D --node NODE --reason WHY [--gpus 0,1]
                            reserve for USER over the work running there: its owners are
                            told, then stopped after the grace (audited)
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from allocator.metrics import register as register_allocator_metrics
from allocator.service import Allocator
from allocator.store import AllocationStore
from enforcer.app import create_app, new_control
from enforcer.desired import Desired, allowances
from enforcer.inventory import Enrolled
from enforcer.logins import LoginLinks
from enforcer.nodes import Pusher
from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.store import Retention, Store
from enforcer.usage import LedgerUsage
from gpuacct import http
from gpuacct.allocation import (
    PREEMPT_PATH,
    Preempt,
    Reserve,
    UsageError,
    parse_duration,
    parse_gpus,
)
from gpuacct.build import BuildInfo
from gpuacct.cli_common import (
    command_or_usage,
    load_or_exit,
    service_parser,
    stop_on_signals,
)
from gpuacct.config import Settings
from gpuacct.lease import Lease
from gpuacct.listener import BasicAuth
from gpuacct.promql import Prometheus
from gpuacct.secrets import Tokens, values
from gpuacct.service import Service, start
from gpuacct.signing import MasterKeys, node_key
from gpuacct.store import SchemaError, exists, places


def _parser() -> argparse.ArgumentParser:
    parser, sub = service_parser("gpuacct-enforcer", __doc__, "serve the webhook and push the "
                                 "policy", "the webhook and /metrics")
    sub.add_parser("policy", help="the desired policy, as JSON")
    audit = sub.add_parser("audit", help="the audit log, oldest first")
    audit.add_argument("--user")
    audit.add_argument("--limit", type=int, default=100)
    key = sub.add_parser("node-key", help="the key of a node (its auth.node_key), derived "
                         "from auth.node_master_key and the node's name")
    key.add_argument("node", help="the node's name: exporter.actuator.node_name, or its "
                     "host name")
    key.add_argument("--next", action="store_true",
                     help="from the second master key (during a rotation)")
    preempt = sub.add_parser("preempt", help="reserve GPUs for a user over the work running "
                             "on them (its owners told, then stopped after the grace)")
    preempt.add_argument("user")
    preempt.add_argument("count", metavar="N")
    preempt.add_argument("--for", dest="duration", required=True, metavar="DURATION")
    preempt.add_argument("--node", required=True)
    preempt.add_argument("--gpus", metavar="0,1")
    preempt.add_argument("--reason", required=True, help="why, for the audit")
    preempt.add_argument("--admin", default=getpass.getuser(),
                         help="who asks (default: your login)")
    preempt.add_argument("--url", help="the running enforcer (default: web.enforcer_url)")
    return parser


def _preempt(settings: Settings, args: argparse.Namespace) -> int:
    """The running enforcer's allocator, asked with the webhook's token."""
    try:
        if not args.count.isdigit():
            raise UsageError(f"{args.count!r}: expected a number of GPUs such as 1")
        gpus = parse_gpus(args.gpus) if args.gpus else None
        ask = Reserve(count=int(args.count),
                      seconds=parse_duration(args.duration), node=args.node, gpus=gpus)
        body = Preempt(user=args.user, admin=args.admin, reason=args.reason, ask=ask)
    except (UsageError, ValidationError) as exc:
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        print(f"gpuacct-enforcer preempt: {problem}", file=sys.stderr)
        return 2
    url = args.url or settings.web.enforcer_url
    tokens = values(settings.auth.webhook_token or ())
    if not url or not tokens:
        print("gpuacct-enforcer preempt: needs the enforcer's URL (web.enforcer_url or --url) "
              "and auth.webhook_token", file=sys.stderr)
        return 2
    try:
        answer = http.request("POST", url.rstrip("/") + PREEMPT_PATH, 30,
                              body.model_dump_json().encode(),
                              {"Authorization": f"Bearer {tokens[0]}",
                               "Content-Type": "application/json"},
                              settings.tls_client_config.context())
    except http.HttpError as exc:
        problem = http.detail(exc.reason) if exc.status else f"cannot reach {url}: {exc}"
        print(f"gpuacct-enforcer preempt: {problem}", file=sys.stderr)
        return 1
    print(json.loads(answer.body)["text"])
    return 0


def _masters(settings: Settings) -> list[bytes]:
    if not settings.auth.node_master_key:
        raise ValueError("auth.node_master_key must be set: every node's key is derived from it")
    return [k.encode() for k in values(settings.auth.node_master_key)]


def _secrets(settings: Settings) -> tuple[tuple[str, ...], list[bytes]]:
    """The webhook tokens and the master keys; ValueError names what is missing."""
    auth = settings.auth
    missing = [name for name, value in (("auth.webhook_token", auth.webhook_token),
                                        ("auth.node_master_key", auth.node_master_key))
               if not value]
    if missing or not auth.webhook_token:
        raise ValueError(f"{' and '.join(missing)} must be set: nothing may change a node's "
                         "state without them")
    return values(auth.webhook_token), _masters(settings)


def _rotate(tokens: Tokens, keys: MasterKeys) -> Callable[[Settings], str]:
    """What SIGHUP does: the webhook tokens and the master keys read again."""
    def apply(settings: Settings) -> str:
        new_tokens, masters = _secrets(settings)
        tokens.replace(new_tokens)
        keys.rotate(masters)
        return f"{len(new_tokens)} webhook token(s), {len(masters)} node master key(s)"
    return apply


T = TypeVar("T")


def _opened(what: str, open_store: Callable[[], T]) -> T:
    """A store, or the enforcer stops with one line naming what is wrong with it."""
    try:
        return open_store()
    except SchemaError as exc:
        raise SystemExit(f"gpuacct-enforcer: {what}: {exc}") from None


def run(service: Service) -> int:
    settings, log, host, port = service.settings, service.log, service.host, service.port
    try:
        webhook_tokens, masters = _secrets(settings)
    except ValueError as exc:
        raise SystemExit(f"gpuacct-enforcer: {exc}") from None
    tokens = Tokens(webhook_tokens)
    inventory = settings.enforcer.enrolled_nodes_file
    keys = MasterKeys(masters, settings.auth.max_clock_skew_seconds,
                      Enrolled(inventory) if inventory else None)
    service.reload_on_sighup(_rotate(tokens, keys))  # a standby's too
    store = _opened("the database", lambda: Store(settings.enforcer.database, Retention(
        settings.enforcer.delivery_days, settings.enforcer.audit_days)))
    # The same host and port is the same enforcer: restarted, it takes its own lease back.
    lease = Lease(store, f"{socket.gethostname()}:{port}", settings.enforcer.lease_seconds, log)
    # Nothing is served on standby: Alertmanager retries a refused webhook, and a node pulls
    # from whichever enforcer answers.
    if not lease.wait(stop_on_signals()):
        store.close()
        return 0
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn's own handlers from here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    store.reload()  # what another enforcer decided while this one stood by
    allocator = Allocator(_opened("the allocator's store",
                                  lambda: AllocationStore(places.allocator(settings))),
                          settings.allocator,
                          restriction=lambda user: _restriction(store, user),
                          usage=LedgerUsage(settings))
    desired = Desired(store, allocator, allowances(settings.billing))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BuildInfo())
    pusher = Pusher(desired, keys, settings.enforcer, registry, tls=service.tls)
    register_allocator_metrics(allocator, registry)
    links = LoginLinks(settings.web.public_url, settings.web.auth.link_seconds,
                       settings.exporter.min_uid)
    notices = _opened("the notices' store", lambda: Notices(
        places.notices(settings), settings.notifications,
        settings.web.public_url))
    notifier = Notifier(notices, settings.notifications, registry)

    def allocation_changed() -> None:
        pusher.policy_changed()
        if tell_allocations(allocator, notices):  # granted, expiring, idle: by mail too
            notifier.wake()

    allocator.on_change = allocation_changed
    notices.alerts_changed(store.firing())  # what started while the enforcer was away
    app = create_app(new_control(desired, pusher, tokens, keys, registry,
                                 BasicAuth(service.listener.basic_auth_users),
                                 links, (notices, notifier),
                                 Prometheus(settings.enforcer.prometheus_url,
                                            settings.enforcer.push_timeout_seconds,
                                            service.tls)),
                     max_body_bytes=settings.enforcer.max_body_bytes)
    pusher.start()
    stop = threading.Event()
    notifier.start(stop)
    threading.Thread(target=_tick, args=(allocator, settings.allocator.check_interval_seconds,
                                         stop), name="allocator", daemon=True).start()
    log.info("webhook on %s:%d, policy version %d, state in %s", host, port,
             desired.current().version, settings.enforcer.database)
    server = service.asgi_server(app)
    lease.keep(stop, on_lost=lambda: setattr(server, "should_exit", True))
    server.run()
    stop.set()
    pusher.stop()
    lease.release()
    store.close()
    allocator.store.close()
    notices.close()
    log.info("stopped")
    return 0 if server.started and not lease.lost.is_set() else 1


def tell_allocations(allocator: Allocator, notices: Notices) -> int:
    """The allocator's notices to users (a grant, an expiry coming, an idle release), each
    queued once by e-mail and chat as well as on the terminals; how many were new."""
    new = 0
    for n in allocator.store.notices():
        digest = hashlib.sha256(n.text.encode()).hexdigest()[:12]
        subject = n.text.splitlines()[0].removeprefix("gpuacct: ")[:200]
        new += notices.told(f"allocation:{n.id}:{digest}", n.user, subject, n.text)
    return new


def _restriction(store: Store, user: str) -> str | None:
    """Why a user may not be given GPUs now: their account is blocked by an alert."""
    policy = store.policy.users.get(user)
    if policy is None or not policy.block:
        return None
    alerts = [r.summary or r.alert for r in policy.reasons if r.action in ("block", "kill")]
    return f"new GPU work is blocked ({'; '.join(alerts)})"


def _tick(allocator: Allocator, interval: float, stop: threading.Event) -> None:
    log = logging.getLogger("allocator")
    while not stop.wait(interval):
        try:
            allocator.tick()
        except Exception:  # a failed tick is retried at the next; the service goes on
            log.exception("allocator tick failed")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = command_or_usage(parser, args)
    if command == "run":
        return run(start("gpuacct-enforcer", args, lambda s: s.enforcer.listen_address))
    settings = load_or_exit(args.config)
    if command == "node-key":
        try:
            masters = _masters(settings)
        except ValueError as exc:
            print(f"gpuacct-enforcer: {exc}", file=sys.stderr)
            return 2
        if args.next and len(masters) < 2:
            print("gpuacct-enforcer: --next: auth.node_master_key has one key, not two",
                  file=sys.stderr)
            return 2
        if not args.node.strip() or args.node != args.node.strip():
            print(f"gpuacct-enforcer: {args.node!r} is not a node's name", file=sys.stderr)
            return 2
        print(node_key(masters[1 if args.next else 0], args.node).decode())
        return 0
    if command == "preempt":
        return _preempt(settings, args)
    if command in ("policy", "audit"):
        if not exists(settings.enforcer.database):
            print(f"gpuacct-enforcer: no state at {settings.enforcer.database}", file=sys.stderr)
            return 1
        state = Store(settings.enforcer.database)
        if args.command == "policy":
            print(json.dumps(json.loads(state.dump_policy()), indent=2))
        for e in state.audit(args.user, args.limit) if args.command == "audit" else ():
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
            print(f"{stamp}  {e.node:<24} {e.user:<16} {e.action:<10} {e.result:<9} "
                  f"{e.alert}  {e.detail}")
        return 0
    return 2
