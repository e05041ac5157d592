"""What the enforcer's routes need, as FastAPI dependencies (as web.deps is for the web): the
running control plane's parts, and the bearer token every state-reading or -changing route
asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter

from allocator.service import Allocator
from enforcer.desired import Desired
from enforcer.logins import LoginLinks
from enforcer.nodes import Pusher
from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.store import Store
from gpuacct.listener import BasicAuth
from gpuacct.promql import Prometheus
from gpuacct.secrets import Tokens
from gpuacct.signing import MasterKeys


@dataclass(frozen=True)
class Control:
    """The control plane one enforcer process runs."""

    desired: Desired
    pusher: Pusher
    webhook_tokens: Tokens
    keys: MasterKeys
    registry: CollectorRegistry
    scrapers: BasicAuth  # who may read /metrics
    received: Counter  # alerts in webhook deliveries, by outcome
    links: LoginLinks | None = None
    notices: Notices | None = None
    notifier: Notifier | None = None
    prometheus: Prometheus | None = None  # where users' balances are read for their nodes

    @property
    def store(self) -> Store:
        return self.desired.store


def control(request: Request) -> Control:
    found: Control = request.app.state.control
    return found


Ctl = Annotated[Control, Depends(control)]


def _keys(ctl: Ctl) -> MasterKeys:
    return ctl.keys


Keys = Annotated[MasterKeys, Depends(_keys)]


def bearer(ctl: Ctl, authorization: Annotated[str, Header()] = "") -> None:
    scheme, _, token = authorization.partition(" ")
    if not ctl.webhook_tokens.matches(token) or scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required (auth.webhook_token)",
                            headers={"WWW-Authenticate": "Bearer"})


AUTHORIZED = [Depends(bearer)]  # a router's or a route's dependencies


def _allocator(ctl: Ctl) -> Allocator:
    if ctl.desired.allocator is None:  # its routes are mounted only with it
        raise HTTPException(404, "no allocator runs here")
    return ctl.desired.allocator


def _links(ctl: Ctl) -> LoginLinks:
    if ctl.links is None:
        raise HTTPException(404, "no login links are given here")
    return ctl.links


def _notices(ctl: Ctl) -> tuple[Notices, Notifier]:
    if ctl.notices is None or ctl.notifier is None:
        raise HTTPException(404, "no notices are sent from here")
    return ctl.notices, ctl.notifier


Alloc = Annotated[Allocator, Depends(_allocator)]
Links = Annotated[LoginLinks, Depends(_links)]
Outbox = Annotated[tuple[Notices, Notifier], Depends(_notices)]
