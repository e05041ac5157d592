"""The enforcer's HTTP API: its routers (enforcer.policy_api, enforcer.allocation_api when
the allocator runs here, enforcer.people_api for login links, notices and users' balances),
one error body (`{"detail": ...}`) for all, and `GET /metrics` (basic auth from
--web.config.file, else open like every exporter) and `GET /-/healthy`.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge

from allocator.service import NotFound
from enforcer import allocation_api, people_api, policy_api
from enforcer.deps import Control
from enforcer.desired import Desired
from enforcer.logins import LoginLinks
from enforcer.nodes import Pusher
from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.signed import problems
from gpuacct.bounded_body import BoundedBodies
from gpuacct.listener import BasicAuth
from gpuacct.metrics_asgi import metrics_router
from gpuacct.promql import Prometheus
from gpuacct.secrets import Tokens
from gpuacct.signing import MasterKeys

ops = APIRouter(include_in_schema=False)


@ops.get("/-/healthy")
def healthy() -> PlainTextResponse:
    return PlainTextResponse("ok\n")


def create_app(control: Control, *, max_body_bytes: int) -> FastAPI:
    app = FastAPI(title="gpuacct-enforcer", version="1",
                  description="Alertmanager's webhook in, the enforcement policy out to nodes.")
    app.add_middleware(BoundedBodies, max_bytes=max_body_bytes)
    app.state.control = control

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/v1/alerts":
            control.received.labels("refused").inc()
        return JSONResponse({"detail": f"bad request: {problems(exc)}"}, status_code=400)

    app.include_router(policy_api.router)
    app.include_router(policy_api.authorized)
    if control.desired.allocator is not None:
        app.add_exception_handler(NotFound, allocation_api.not_found)
        app.include_router(allocation_api.router)
        app.include_router(allocation_api.authorized)
    if control.links is not None:
        app.include_router(people_api.logins)
        app.include_router(people_api.redeeming)
    if control.notices is not None:
        app.include_router(people_api.notices)
    if control.prometheus is not None:
        app.include_router(people_api.balances)
    app.include_router(metrics_router(control.registry, control.scrapers))
    app.include_router(ops)
    return app


def new_control(desired: Desired, pusher: Pusher, webhook_tokens: Tokens, keys: MasterKeys,
                registry: CollectorRegistry, scrapers: BasicAuth,
                links: LoginLinks | None = None,
                notices: tuple[Notices, Notifier] | None = None,
                prometheus: Prometheus | None = None) -> Control:
    """The control plane's parts, with its metrics registered in `registry`."""
    received = Counter("gpuacct_enforcer_alerts_received", "Alerts in webhook deliveries.",
                       ["outcome"], registry=registry)
    for outcome in ("new", "duplicate", "refused"):
        received.labels(outcome)
    version = Gauge("gpuacct_enforcer_policy_version", "Version of the desired policy.",
                    registry=registry)
    version.set_function(lambda: desired.current().version)
    notice_store, notifier = notices if notices is not None else (None, None)
    return Control(desired, pusher, webhook_tokens, keys, registry, scrapers, received, links,
                   notice_store, notifier, prometheus)
