"""The enforcer's policy routes.

- `POST /v1/alerts`: Alertmanager's webhook (bearer token); 400 with the problem named for a bad
  payload, 401 without the token, 200 once the delivery is stored (pushing happens after).
- `POST /v1/sync`: a node's signed pull; it reports its actions and gets the signed policy.
- `GET /v1/policy`, `GET /v1/audit`: the desired state and the audit log (bearer token).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from enforcer.deps import AUTHORIZED, Ctl, Keys
from enforcer.payload import Notification
from enforcer.signed import signed_answer, signed_body
from gpuacct.policy import SYNC_PATH, SyncRequest

log = logging.getLogger(__name__)

router = APIRouter()  # the signed route: its own authentication
authorized = APIRouter(dependencies=AUTHORIZED)


@authorized.post("/v1/alerts")
def alerts(ctl: Ctl, notification: Notification) -> dict[str, int]:
    store = ctl.store
    result = store.receive(notification)
    ctl.received.labels("new").inc(result.new)
    ctl.received.labels("duplicate").inc(result.duplicate)
    if result.changed:
        log.info("policy %d: %s", result.version, store.policy.users)
        ctl.pusher.policy_changed()
    users = {a.user for a in notification.alerts}
    if ctl.notices is not None and ctl.notifier is not None and result.new and \
            ctl.notices.alerts_changed(store.firing(users), users):
        ctl.notifier.wake()
    return {"new": result.new, "duplicate": result.duplicate, "version": result.version}


@router.post(SYNC_PATH, include_in_schema=False)
async def sync(request: Request, ctl: Ctl, keys: Keys) -> Response:
    report = await signed_body(request, keys, SYNC_PATH, SyncRequest, "sync request",
                               lambda r: r.node)
    # In a worker thread: the store and the allocator's lock never hold up the event loop.
    await run_in_threadpool(_record_sync, ctl, report)
    return signed_answer(keys, report.node, SYNC_PATH, ctl.desired.for_nodes())


def _record_sync(ctl: Ctl, report: SyncRequest) -> None:
    ctl.store.record_actions(report.node, report.actions)
    if report.held is not None:
        ctl.desired.report_held(report.node, report.held)
    allocator = ctl.desired.allocator
    if allocator is not None:
        if report.gpus is not None:
            allocator.report_gpus(report.node, report.gpus)
        allocator.report_use(report.reservation_use)
        allocator.release_idle(report.node, report.release_idle)


@authorized.get("/v1/policy")
def policy(ctl: Ctl) -> Response:
    return Response(ctl.desired.dump(), media_type="application/json")


@authorized.get("/v1/audit")
def audit(ctl: Ctl, user: str | None = None, limit: int = 1000) -> list[dict[str, object]]:
    return [vars(e) for e in ctl.store.audit(user, max(1, min(limit, 100_000)))]
