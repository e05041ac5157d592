"""What every route needs: the settings, the ledger, who is asking."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Response

from gpuacct.config import Settings
from gpuacct.money import shown
from gpuacct.secrets import values
from ledger import Ledger, LedgerWriter
from web.auth import LEGACY_ADMIN, SESSION_COOKIE, LoginLimiter, Role, Sessions, Viewer
from web.fragments import Fragments
from web.jobs_view import JobsView
from web.live import Live
from web.queries import AccountRow, LedgerView
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
    jobs: JobsView
    _writer: LedgerWriter | None = None
    _writer_lock: threading.Lock = field(default_factory=threading.Lock)

    def administrator(self, name: str | None) -> tuple[Role, frozenset[str], str] | None:
        """An administrator's role, accounts (a manager's) and password hash; None: none."""
        found = self.settings.web.administrators.get(name or "")
        if found is not None:
            return found.role, frozenset(found.accounts), found.password_hash.get_secret_value()
        if name == LEGACY_ADMIN and self.admin_hash:
            return "admin", frozenset(), self.admin_hash
        return None

    def rotate(self, settings: Settings) -> str:
        """What SIGHUP does: the session secrets, the token to the enforcer and the
        administrator's password hash read again (a new secret signs from now on)."""
        secret = settings.web.session_secret
        if secret is None:
            raise ValueError("web.session_secret is no longer set: every session would end")
        self.sessions.rotate(values(secret))
        token = settings.auth.webhook_token
        self.live.token = values(token)[0] if token else None
        admin = settings.auth.admin_password_hash
        self.admin_hash = admin.get_secret_value() if admin else None
        return (f"{len(secret)} session secret(s), "
                f"{len(token) if token else 0} token(s) for the enforcer")

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


def peer(request: Request) -> str:
    return request.client.host if request.client else ""


def client_address(request: Request, ctx: Context) -> str:
    """Who is asking, for the login throttle and the audit: the peer, or, from one of
    web.trusted_proxies only, the nearest address its X-Forwarded-For names (a client can
    write anything before that)."""
    address = peer(request)
    if address in ctx.settings.web.trusted_proxies:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[-1].strip()
        return forwarded[:64] or address
    return address


def set_session(request: Request, response: Response, cookie: str,
                max_age: int | None = None) -> None:
    """The session cookie: never for script, never sent from another site, and only over
    TLS when the page is served over TLS."""
    response.set_cookie(SESSION_COOKIE, cookie, max_age=max_age, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def viewer(request: Request, ctx: Ctx) -> Viewer:
    session = ctx.sessions.read(request.cookies.get(SESSION_COOKIE)) or {}
    web = ctx.settings.web
    client = peer(request)
    kept = session.get("user")
    user = kept if isinstance(kept, str) else None
    if client in web.trusted_proxies and request.headers.get(web.user_header):
        user = request.headers[web.user_header]  # the proxy says who is asking now
    name = session.get("name")
    found = ctx.administrator(name) if isinstance(name, str) else None
    granted = session.get("role")
    if found is None and isinstance(name, str) and granted in DIRECTORY_ROLES:
        found = (granted, frozenset(), "")  # type: ignore[assignment]  # checked just above
    csrf = str(session.get("csrf", ""))
    if found is None:  # not logged in, or no longer an administrator
        return Viewer(admin=False, user=user, csrf=csrf)
    role, manages, _ = found
    return Viewer(admin=True, user=user, csrf=csrf, name=str(name), role=role, manages=manages)


DIRECTORY_ROLES = ("admin", "finance")  # what a directory group may grant (web.auth.ldap)


Who = Annotated[Viewer, Depends(viewer)]
A = TypeVar("A", bound=AccountRow)
MONEY: tuple[Role, ...] = ("admin", "finance")  # recharges, adjustments, prices, exports, audit


def _needs(roles: tuple[Role, ...], what: str) -> Callable[[Viewer], Viewer]:
    def check(who: Who) -> Viewer:
        if who.role is None:
            raise HTTPException(403, "administrators only: log in at /login")
        if who.role not in roles:
            raise HTTPException(403, f"{what} needs the {' or '.join(roles)} role; "
                                     f"{who.name} is a {who.role}")
        return who
    return check


Admin = Annotated[Viewer, Depends(_needs(("admin",), "this page"))]
Finance = Annotated[Viewer, Depends(_needs(MONEY, "money, prices, exports and the audit"))]
Staff = Annotated[Viewer, Depends(_needs(("admin", "finance", "manager"), "this page"))]


def _someone(who: Who) -> Viewer:
    if who.user is None and who.role is None:
        raise HTTPException(403, "log in first: /login, or `gpuacct web` on a node")
    return who


Someone = Annotated[Viewer, Depends(_someone)]  # any user or administrator logged in


def check_csrf(who: Viewer, token: str | None) -> None:
    if not who.csrf or not token or not hmac.compare_digest(who.csrf, token):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page "
                                 "and try again")


def own_or_admin(who: Viewer, user: str) -> bool:
    """A user's own reservations and notice settings: changed by the user or an admin only
    (finance and managers see them, no more)."""
    return who.user == user or who.role == "admin"


def may_change(who: Viewer, user: str, what: str) -> None:
    if not own_or_admin(who, user):
        raise HTTPException(403, f"you may change only your own {what}")


def may_see(who: Viewer, user: str, ctx: Context) -> None:
    """Admin and finance see everyone; a manager their accounts and the users charged to
    them; a user only themselves."""
    if who.role in MONEY or who.user == user:
        return
    if who.role == "manager":
        if user in who.manages or ctx.view.charged_to(user) in who.manages:
            return
        raise HTTPException(403, f"{who.name} manages {', '.join(sorted(who.manages))}: "
                                 f"{user} is not charged to it")
    raise HTTPException(403, "you may see only your own account")


def visible(who: Viewer, ctx: Context, accounts: list[A]) -> list[A]:
    """The accounts (rows with `.user`, the account's name) this administrator may see."""
    if who.role != "manager":
        return accounts
    charged_to = ctx.view.charged_to
    return [a for a in accounts if a.user in who.manages or charged_to(a.user) in who.manages]


fmt = shown  # the pages' name for it


def when(at: float) -> str:
    """A Unix time as the pages show it (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
