"""The enforcer's HTTP API.

- `POST /v1/alerts`: Alertmanager's webhook (bearer token); 400 with the problem named for a bad
  payload, 401 without the token, 200 once the delivery is stored (pushing happens after).
- `POST /v1/sync`: a node's signed pull; it reports its actions and gets the signed policy.
- `GET /v1/policy`, `GET /v1/audit`: the desired state and the audit log (bearer token).
- `GET /metrics` (open, like every exporter), `GET /-/healthy`.
- The allocator's routes (enforcer.allocation_api), when it runs here; login links and
  notices (enforcer.people_api).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from enforcer.allocation_api import add_allocation_routes
from enforcer.desired import Desired
from enforcer.logins import LoginLinks
from enforcer.nodes import Pusher
from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.payload import Notification
from enforcer.people_api import add_login_routes, add_notice_routes
from enforcer.signed import problems, signed_answer, signed_body
from gpuacct.bounded_body import BoundedBodies
from gpuacct.listener import BasicAuth
from gpuacct.policy import SYNC_PATH, SyncRequest
from gpuacct.secrets import Tokens
from gpuacct.signing import MasterKeys

log = logging.getLogger(__name__)


def create_app(desired: Desired, pusher: Pusher, webhook_tokens: Tokens, keys: MasterKeys,
               registry: CollectorRegistry, scrapers: BasicAuth,
               links: LoginLinks | None = None,
               notices: tuple[Notices, Notifier] | None = None,
               *, max_body_bytes: int) -> FastAPI:
    store = desired.store
    app = FastAPI(title="gpuacct-enforcer", version="1",
                  description="Alertmanager's webhook in, the enforcement policy out to nodes.")
    app.add_middleware(BoundedBodies, max_bytes=max_body_bytes)
    received = Counter("gpuacct_enforcer_alerts_received", "Alerts in webhook deliveries.",
                       ["outcome"], registry=registry)
    for outcome in ("new", "duplicate", "refused"):
        received.labels(outcome)
    version = Gauge("gpuacct_enforcer_policy_version", "Version of the desired policy.",
                    registry=registry)
    version.set_function(lambda: desired.current().version)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/v1/alerts":
            received.labels("refused").inc()
        return JSONResponse({"detail": f"bad request: {problems(exc)}"}, status_code=400)

    def bearer(authorization: Annotated[str, Header()] = "") -> None:
        scheme, _, token = authorization.partition(" ")
        if not webhook_tokens.matches(token) or scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required (auth.webhook_token)",
                                headers={"WWW-Authenticate": "Bearer"})

    authorized = [Depends(bearer)]

    @app.post("/v1/alerts", dependencies=authorized)
    def alerts(notification: Notification) -> dict[str, int]:
        result = store.receive(notification)
        received.labels("new").inc(result.new)
        received.labels("duplicate").inc(result.duplicate)
        if result.changed:
            log.info("policy %d: %s", result.version, store.policy.users)
            pusher.policy_changed()
        users = {a.user for a in notification.alerts}
        if notices is not None and result.new and notices[0].alerts_changed(
                store.firing(users), users):
            notices[1].wake()
        return {"new": result.new, "duplicate": result.duplicate, "version": result.version}

    @app.post(SYNC_PATH, include_in_schema=False)
    async def sync(request: Request) -> Response:
        report = await signed_body(request, keys, SYNC_PATH, SyncRequest, "sync request",
                                   lambda r: r.node)
        # In a worker thread: the store and the allocator's lock never hold up the event loop.
        await run_in_threadpool(record_sync, report)
        return signed_answer(keys, report.node, SYNC_PATH, desired.dump())

    def record_sync(report: SyncRequest) -> None:
        store.record_actions(report.node, report.actions)
        if desired.allocator is not None:
            if report.gpus is not None:
                desired.allocator.report_gpus(report.node, report.gpus)
            desired.allocator.report_use(report.reservation_use)
            desired.allocator.release_idle(report.node, report.release_idle)

    @app.get("/v1/policy", dependencies=authorized)
    def policy() -> Response:
        return Response(desired.dump(), media_type="application/json")

    @app.get("/v1/audit", dependencies=authorized)
    def audit(user: str | None = None, limit: int = 1000) -> list[dict[str, object]]:
        return [vars(e) for e in store.audit(user, max(1, min(limit, 100_000)))]

    if desired.allocator is not None:
        add_allocation_routes(app, desired.allocator, keys, authorized)
    if links is not None:
        add_login_routes(app, links, keys, authorized)
    if notices is not None:
        add_notice_routes(app, *notices, authorized)

    @app.get("/metrics", include_in_schema=False)
    def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not scrapers.allows(authorization):
            return PlainTextResponse("unauthorized: basic_auth_users of --web.config.file\n",
                                     401, {"WWW-Authenticate": 'Basic realm="gpuacct"'})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/-/healthy", include_in_schema=False)
    def healthy() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    return app
