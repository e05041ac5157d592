"""The HTML pages: login, the administrators' overview, a user's page, recharge and adjust,
the weekly waste report."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from gpuacct.notices import LearnedAddress
from gpuacct.periods import parse_time, week_start
from gpuacct.tiers import RANK
from gpuacct.wording import duration, enforced, runs_out, time_left
from ledger import LedgerError, Posting, SchemaError
from web import directory, export, prices
from web.actions import Refused, post_money
from web.auth import (
    LEGACY_ADMIN,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Viewer,
    verify_password,
    weaker_than_now,
)
from web.deps import (
    Admin,
    Context,
    Ctx,
    Finance,
    Someone,
    Staff,
    Who,
    check_csrf,
    client_address,
    fmt,
    may_change,
    may_see,
    own_or_admin,
    set_session,
    visible,
    when,
)
from web.live import EnforcerRefused
from web.status import AccountStatus

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
# Lowest balances first; the biggest spenders first.
SORTS: dict[str, Callable[[AccountStatus], Any]] = {
    "user": lambda a: a.user, "balance": lambda a: a.balance,
    "cost_24h": lambda a: -a.cost_24h, "tier": lambda a: RANK[a.tier],
    "burn": lambda a: -(a.cost_per_hour or 0)}


def templates(request: Request) -> Jinja2Templates:
    t: Jinja2Templates = request.app.state.templates
    return t


HELPERS = {"fmt": fmt, "when": when, "enforced": enforced, "duration": duration,
           "runs_out": runs_out, "time_left": time_left}


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return templates(request).TemplateResponse(request, name, {**HELPERS, **values},
                                               status_code=status)


def fragment(request: Request, name: str, **values: Any) -> str:
    return templates(request).get_template(name).render(**HELPERS, **values)


@router.get("/")
def home(who: Who) -> RedirectResponse:
    target = "/admin" if who.admin else f"/users/{who.user}" if who.user else "/login"
    return RedirectResponse(target, status_code=303)


@router.get("/login")
def login_form(request: Request, ctx: Ctx) -> HTMLResponse:
    cookie, csrf = ctx.sessions.new(None)
    response = render(request, "login.html", csrf=csrf, error=None)
    set_session(request, response, cookie)
    return response


@router.post("/login")
def login(request: Request, ctx: Ctx, who: Who, password: Annotated[str, Form()] = "",
          name: Annotated[str, Form(max_length=64)] = "",
          csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(who, csrf)
    client = client_address(request, ctx)
    name = name.strip() or LEGACY_ADMIN  # the one password of before had no name
    # Failures count against the address and against the name: many addresses guessing one
    # account are held back as one address guessing many.
    tried = (client, f"account {name}")
    if any(ctx.limiter.blocked(t) for t in tried):
        return render(request, "login.html", 429, csrf=who.csrf,
                      error="too many failed logins: wait a minute")
    found = ctx.administrator(name)
    if found is not None and verify_password(password, found[2]):
        if weaker_than_now(found[2]):  # the hash is in the config: only its owner can renew it
            log.warning("administrator %s logs in with a password hash weaker than argon2id "
                        "at OWASP's parameters: make a new one with `gpuacct-web "
                        "hash-password` and put it in the config", name)
        audit(ctx, f"{name} (web)", "login", name, f"from {client}, as {found[0]}")
        return logged_in(request, ctx.sessions.new(name)[0], "/admin")
    person = None
    if found is None and (ctx.settings.web.auth.ldap or ctx.settings.web.auth.pam):
        try:
            person = directory.check(ctx.settings.web.auth, name, password)
        except directory.DirectoryUnreachable as exc:
            return render(request, "login.html", 503, csrf=who.csrf,
                          error=f"{exc}: try again later")
    if person is None:
        for t in tried:
            ctx.limiter.failed(t)
        audit(ctx, f"web client {client}", "login.failed", name)
        return render(request, "login.html", 401, csrf=who.csrf,
                      error="wrong name or password")
    audit(ctx, f"{name} (web)", "login", name,
           f"from {client}, through {person.via}" + (f", as {person.role}" if person.role else ""))
    if person.mail:
        with contextlib.suppress(EnforcerRefused):  # the login does not wait on notices
            ctx.live.call("POST", f"/v1/notices/settings/{name}/learned",
                          LearnedAddress(address=person.mail))
    cookie, _ = ctx.sessions.new(name if person.role else None, user=name, role=person.role)
    return logged_in(request, cookie, "/admin" if person.role else f"/users/{name}")


def audit(ctx: Context, actor: str, action: str, subject: str, detail: str = "") -> None:
    with contextlib.suppress(LedgerError, SchemaError):  # the answer does not wait on it
        ctx.writer().audit(actor, action, subject, detail)


def logged_in(request: Request, cookie: str, target: str) -> RedirectResponse:
    """A new session (and CSRF token) on every login."""
    response = RedirectResponse(target, status_code=303)
    set_session(request, response, cookie, SESSION_SECONDS)
    return response


@router.post("/logout")
def logout(who: Who, csrf: Annotated[str, Form()] = "") -> RedirectResponse:
    check_csrf(who, csrf)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/admin")
def overview(request: Request, ctx: Ctx, who: Staff,
             sort: Annotated[str, Query(pattern="^(user|balance|cost_24h|tier|burn)$")] = "balance"
             ) -> HTMLResponse:
    overview = ctx.accounts.overview()
    accounts = visible(who, ctx, overview.accounts)  # a manager: their accounts and members
    table = ctx.fragments.get(("overview", overview.version, sort, who.manages), lambda: fragment(
        request, "_accounts_table.html", accounts=sorted(accounts, key=SORTS[sort])))
    return render(request, "overview.html", who=who, sort=sort, problems=overview.problems,
                  accounts=accounts, table=table)


@router.get("/users/{user}")
def user_page(request: Request, ctx: Ctx, who: Who, user: str,
              page: Annotated[int, Query(ge=0, le=100_000)] = 0,
              message: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    return _user_page(request, ctx, who, user, page, message)


def _user_page(request: Request, ctx: Ctx, who: Viewer, user: str, page: int = 0,
               message: str | None = None, error: str | None = None) -> HTMLResponse:
    may_see(who, user, ctx)
    account = ctx.accounts.for_user(user)
    if account is None:
        if who.user == user:  # logged in before any usage of theirs was billed
            raise HTTPException(404, f"{user}, nothing of yours has been billed yet: your "
                                     "account opens with your first GPU or CPU minute")
        raise HTTPException(404, f"there is no account {user!r}")
    history = ctx.fragments.get(("history", ctx.view.version(), user, page),
                                lambda: _history(request, ctx, user, page, account.user))
    cookie = None
    if not who.csrf:  # a user the proxy vouched for: a session, for the release buttons' CSRF
        cookie, csrf = ctx.sessions.new(None)
        who = dataclasses.replace(who, csrf=csrf)
    reservations = ctx.live.reservations()
    mine = [e for e in (reservations.value.entries if reservations.value else ())
            if e.user == user]
    today = time.gmtime()
    response = render(request, "user.html", status=400 if error else 200, who=who,
                      notices=ctx.live.notice_choice(user)
                      if who.user == user or who.role == "admin" else None,
                      month_start=time.strftime("%Y-%m-01", today),
                      tomorrow=time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400)),
                      user=user, account=account, history=history,
                      members=ctx.view.members(account.user) if account.kind == "group" else [],
                      message=message, error=error,
                      problems=ctx.accounts.overview().problems, reservations=mine,
                      may_release=own_or_admin(who, user),
                      reservations_problem=reservations.problem)
    if cookie:
        set_session(request, response, cookie)
    return response


@router.post("/users/{user}/reservations/{id}/release")
def release(request: Request, ctx: Ctx, who: Who, user: str, id: int,
            csrf: Annotated[str, Form()] = "") -> Response:
    may_change(who, user, "reservations")
    check_csrf(who, csrf)
    try:
        text = ctx.live.release(user, id, who.user or who.name or "administrator")
    except EnforcerRefused as exc:
        return _user_page(request, ctx, who, user, error=f"release refused: {exc}")
    return RedirectResponse(f"/users/{user}?message={text.replace(' ', '+')}", status_code=303)


def _history(request: Request, ctx: Ctx, user: str, page: int, account: str) -> str:
    """The user's cost per day, usage by job and weeks; one page of their account's
    transactions."""
    size = ctx.settings.web.page_size
    transactions, total = ctx.view.transactions(account, page, size)
    daily = ctx.view.daily_cost(user, 30)
    models = sorted({m for day in daily.values() for m in day})
    peak = max((sum(day.values()) for day in daily.values()), default=0) or 1
    return fragment(request, "_user_history.html", transactions=transactions, total=total,
                    postings=ctx.view.postings(account),
                    charge_days=ctx.view.charge_days(account, user, 14),
                    page=page, pages=(total + size - 1) // size, daily=daily, models=models,
                    peak=peak, jobs=ctx.view.usage_by_job(user, time.time() - 30 * 86400),
                    weeks=ctx.view.weeks(user, 8))


def _change(request: Request, ctx: Ctx, who: Finance, user: str, kind: Posting, amount: str,
            reason: str, csrf: str) -> Response:
    check_csrf(who, csrf)
    try:
        balance = post_money(ctx, user, kind, amount, reason, who.actor)
    except Refused as exc:
        if ctx.view.account(user) is None:
            raise HTTPException(404, str(exc)) from None
        return _user_page(request, ctx, who, user, error=f"{kind} refused: {exc}")
    return RedirectResponse(f"/users/{user}?message={kind}+of+{amount.strip()}+done,+balance+"
                            f"{fmt(balance).replace(',', '')}", status_code=303)


@router.post("/users/{user}/recharge")
def recharge(request: Request, ctx: Ctx, who: Finance, user: str,
             amount: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
             csrf: Annotated[str, Form()] = "") -> Response:
    return _change(request, ctx, who, user, "recharge", amount, reason, csrf)


@router.post("/users/{user}/adjust")
def adjust(request: Request, ctx: Ctx, who: Finance, user: str,
           amount: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
           csrf: Annotated[str, Form()] = "") -> Response:
    return _change(request, ctx, who, user, "adjustment", amount, reason, csrf)


@router.get("/admin/export/{what}.csv")
def export_csv(ctx: Ctx, who: Finance, what: str, start: Annotated[str, Query(alias="from")],
               end: Annotated[str, Query(alias="to")]) -> Response:
    return export.csv_response(ctx, what, start, end)


@router.get("/admin/waste")
def waste_page(request: Request, ctx: Ctx, who: Admin,
               week: Annotated[str | None, Query(max_length=40)] = None) -> HTMLResponse:
    """The waste report: each user's week, the idle-held GPU time and its cost first."""
    try:
        start = week_start(parse_time(week) if week else time.time())
    except ValueError as exc:
        raise HTTPException(400, f"week: {exc}") from None
    day = time.strftime("%Y-%m-%d", time.gmtime(start))
    return render(request, "waste.html", who=who, rows=ctx.view.week(start), week=day,
                  before=time.strftime("%Y-%m-%d", time.gmtime(start - 7 * 86400)),
                  after=time.strftime("%Y-%m-%d", time.gmtime(start + 7 * 86400)))


@router.get("/admin/prices")
def prices_page(request: Request, ctx: Ctx, who: Finance,
                message: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    return _prices_page(request, ctx, who, message)


def _prices_page(request: Request, ctx: Ctx, who: Viewer, message: str | None = None,
                 error: str | None = None, form: dict[str, str] | None = None) -> HTMLResponse:
    return render(request, "prices.html", status=400 if error else 200, who=who,
                  history=prices.history(ctx), message=message, error=error, form=form or {})


@router.post("/admin/prices")
def add_prices(request: Request, ctx: Ctx, who: Finance, effective: Annotated[str, Form()] = "",
               gpu: Annotated[str, Form()] = "", other_gpu_per_minute: Annotated[str, Form()] = "",
               cpu_per_core_minute: Annotated[str, Form()] = "",
               reason: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = ""
               ) -> Response:
    check_csrf(who, csrf)
    form = {"effective": effective, "gpu": gpu, "other_gpu_per_minute": other_gpu_per_minute,
            "cpu_per_core_minute": cpu_per_core_minute, "reason": reason}
    try:
        version = prices.add(ctx, {**form, "effective": effective.strip() or None,
                                   "gpu": prices.parse_gpu_lines(gpu)}, who.actor)
    except Refused as exc:
        return _prices_page(request, ctx, who, error=f"new prices refused: {exc}", form=form)
    return RedirectResponse(f"/admin/prices?message=new+prices+in+force+from+"
                            f"{version.effective:%Y-%m-%d+%H:%M:%S}+UTC", status_code=303)


@router.get("/gpus")
def gpus_page(request: Request, ctx: Ctx, who: Someone) -> HTMLResponse:
    """Every GPU, for anyone logged in: what `gpuacct gpus` shows on a node."""
    answer = ctx.live.gpus(None if who.admin else who.user)
    listed = answer.value
    return render(request, "gpus.html", who=who, gpus=listed.gpus if listed else (),
                  now=listed.now if listed else time.time(), problem=answer.problem)


@router.get("/admin/nodes")
def nodes_page(request: Request, ctx: Ctx, who: Admin,
               message: Annotated[str | None, Query(max_length=200)] = None) -> HTMLResponse:
    return _nodes_page(request, ctx, who, message)


def _nodes_page(request: Request, ctx: Ctx, who: Viewer, message: str | None = None,
                error: str | None = None) -> HTMLResponse:
    nodes = ctx.live.nodes()
    summary = ctx.live.reservations()
    entries = summary.value.entries if summary.value else ()
    # (node name, GPU index) -> the reservation holding it
    held = {(e.node, str(g)): e for e in entries if e.state == "granted" for g in e.gpus}
    return render(request, "nodes.html", status=400 if error else 200, who=who,
                  nodes=nodes.value, problem=nodes.problem, held=held,
                  queue=[e for e in entries if e.state == "queued"],
                  reservations_problem=summary.problem, message=message, error=error,
                  now=summary.value.now if summary.value else time.time())


@router.post("/admin/reservations/{id}/cancel")
def cancel(request: Request, ctx: Ctx, who: Admin, id: int,
           reason: Annotated[str, Form(max_length=200)] = "",
           csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(who, csrf)
    try:
        text = ctx.live.cancel(id, who.name or "administrator", reason.strip())
    except EnforcerRefused as exc:
        return _nodes_page(request, ctx, who, error=f"cancel refused: {exc}")
    return RedirectResponse(f"/admin/nodes?message={text.replace(' ', '+')}", status_code=303)
