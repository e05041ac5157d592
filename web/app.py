"""The web application, built from settings by a factory (tests build their own)."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry

from gpuacct.bounded_body import BoundedBodies
from gpuacct.build import BuildInfo
from gpuacct.config import Settings, describe_error
from gpuacct.listener import BasicAuth
from gpuacct.metrics_asgi import metrics_router
from gpuacct.secrets import values
from ledger import ReadOnlyLedger
from web import api, jobs, ledger_pages, pages, people
from web.auth import LoginLimiter, Sessions
from web.deps import Context
from web.fragments import Fragments
from web.headers import SecurityHeaders
from web.jobs_view import JobsView
from web.live import Live
from web.queries import LedgerView
from web.status import Accounts

TEMPLATES = Path(__file__).parent / "templates"


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def create_app(settings: Settings, tls: ssl.SSLContext | None = None,
               scrapers: BasicAuth | None = None) -> FastAPI:
    """The web of `settings`; `tls` verifies https:// Prometheus and enforcer; `scrapers` may
    read /metrics (the listener's basic_auth_users; None: anyone, like every exporter)."""
    ledger_path = settings.billing.ledger
    secret = settings.web.session_secret
    admin_hash = settings.auth.admin_password_hash
    # No /api/docs: Swagger UI is script from a CDN, which the pages' policy (web.headers)
    # and an offline lab both refuse; the OpenAPI document is served.
    app = FastAPI(title="gpuacct", version="1", docs_url=None,
                  openapi_url="/api/v1/openapi.json", redoc_url=None,
                  description="Balances, usage, transactions and recharges of gpuacct.")
    # Added last, runs first: the headers go on every answer, the 413 included.
    app.add_middleware(BoundedBodies, max_bytes=settings.web.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    view = LedgerView(ReadOnlyLedger(ledger_path), settings.billing)
    live = Live(settings, tls=tls)
    app.state.ctx = Context(
        settings=settings, view=view, live=live, accounts=Accounts(view, live),
        fragments=Fragments(),
        sessions=Sessions(values(secret) if secret else [secrets.token_hex(32)]),
        limiter=LoginLimiter(settings.web.login_failures_per_minute),
        admin_hash=admin_hash.get_secret_value() if admin_hash else None,
        jobs=JobsView(settings))
    app.state.templates = Jinja2Templates(directory=TEMPLATES)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BuildInfo())
    app.include_router(metrics_router(registry, scrapers or BasicAuth({})))
    app.include_router(pages.router)
    app.include_router(ledger_pages.router)
    app.include_router(people.router)
    app.include_router(api.router)
    app.include_router(jobs.router)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        return app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, "error.html", {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(describe_error({**e, "loc": [p for p in e["loc"] if p not in (
            "body", "query", "path", "header")]}) for e in exc.errors())
        if _wants_json(request):
            return JSONResponse({"detail": f"bad request: {problems}"}, 400)
        return app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, "error.html", {"status": 400, "detail": f"bad request: {problems}"},
            status_code=400)

    @app.get("/-/healthy", include_in_schema=False)
    def healthy() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    return app
