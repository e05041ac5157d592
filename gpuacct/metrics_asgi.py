"""/metrics for the services that serve an ASGI API (the enforcer, the web): the registry's
text, behind the listener's basic_auth_users when it has any (else open, like every
exporter), as gpuacct.metrics_http serves it for the others."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gpuacct.listener import BasicAuth


def metrics_router(registry: CollectorRegistry, scrapers: BasicAuth) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics")
    def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if not scrapers.allows(authorization):
            return PlainTextResponse("unauthorized: basic_auth_users of --web.config.file\n",
                                     401, {"WWW-Authenticate": 'Basic realm="gpuacct"'})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
