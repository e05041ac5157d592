"""What every route needs: the settings, the ledger, who is asking."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from billing_engine.ledger import Ledger, LedgerWriter
from gpuacct.config import Settings
from web.auth import SESSION_COOKIE, LoginLimiter, Sessions, Viewer
from web.fragments import Fragments
from web.live import Live
from web.queries import LedgerView
from web.status import Accounts


@dataclass
class Context:
    settings: Settings
    view: LedgerView
    live: Live
    accounts: Accounts
    fragments: Fragments
    sessions: Sessions
    limiter: LoginLimiter
    admin_hash: str | None
    _writer: LedgerWriter | None = None
    _writer_lock: threading.Lock = field(default_factory=threading.Lock)

    def writer(self) -> LedgerWriter:
        """The ledger's writer, for an administrator's recharge, adjustment or price: opened
        on first use, and never migrating (gpuacct-billing owns the schema)."""
        with self._writer_lock:
            if self._writer is None:
                self._writer = Ledger(self.settings.billing.ledger, migrate=False)
            return self._writer


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(context)]


def viewer(request: Request, ctx: Ctx) -> Viewer:
    session = ctx.sessions.read(request.cookies.get(SESSION_COOKIE)) or {}
    user = None
    web = ctx.settings.web
    client = request.client.host if request.client else ""
    if client in web.trusted_proxies:
        user = request.headers.get(web.user_header) or None
    return Viewer(admin=session.get("admin") is True, user=user,
                  csrf=str(session.get("csrf", "")))


Who = Annotated[Viewer, Depends(viewer)]


def require_admin(who: Who) -> Viewer:
    if not who.admin:
        raise HTTPException(403, "administrators only: log in at /login")
    return who


Admin = Annotated[Viewer, Depends(require_admin)]


def check_csrf(who: Viewer, token: str | None) -> None:
    if not who.csrf or not token or not hmac.compare_digest(who.csrf, token):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page "
                                 "and try again")


def may_see(who: Viewer, user: str) -> None:
    if not who.may_see(user):
        raise HTTPException(403, "you may see only your own account")


def fmt(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01')):,}"


def when(at: float) -> str:
    """A Unix time as the pages show it (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
