"""The administrators' ledger pages: statements, members' limits, the audit, who may log in."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import quote_plus

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gpuacct.money import parse_amount
from gpuacct.periods import iso, month_name, month_start, parse_month
from ledger import UNASSIGNED, LedgerError, SchemaError
from reports.statement import Format, render
from web.auth import LEGACY_ADMIN
from web.deps import Admin, Ctx, Finance, Staff, check_csrf
from web.pages import render as render_page

router = APIRouter(include_in_schema=False)
MEDIA = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8",
         "pdf": "application/pdf"}


@router.get("/admin/accounts/{name}/statement")
def statement(ctx: Ctx, who: Staff, name: str,
              month: Annotated[str, Query(max_length=20)] = "",
              format: Annotated[Format, Query()] = "html") -> Response:
    """The account's monthly statement (this month without ?month=); a manager's accounts
    only, for a manager."""
    if who.role == "manager" and name not in who.manages:
        raise HTTPException(403, f"{who.name} manages {', '.join(sorted(who.manages))}, not "
                                 f"{name}")
    try:
        start = parse_month(month) if month else month_start(time.time())
    except ValueError as exc:
        raise HTTPException(400, f"month: {exc}") from None
    found = ctx.view.reader.statement(name, start)
    if found is None:
        raise HTTPException(404, f"there is no account {name!r}")
    try:
        body = render(found, format, time.time())
    except RuntimeError as exc:  # a PDF without WeasyPrint
        raise HTTPException(501, str(exc)) from None
    headers = {} if format == "html" else {
        "Content-Disposition": f'attachment; filename="statement-{name}-{month_name(start)}.'
                               f'{format}"'}
    return Response(body, media_type=MEDIA[format], headers=headers)


@router.post("/admin/accounts/{name}/limits")
def member_limit(ctx: Ctx, who: Staff, name: str, user: Annotated[str, Form(max_length=64)] = "",
                 amount: Annotated[str, Form(max_length=40)] = "",
                 csrf: Annotated[str, Form()] = "") -> Response:
    """A member's monthly limit, set by the account's manager (or an admin): budget moved
    between members, no money."""
    check_csrf(who, csrf)
    if who.role != "admin" and name not in who.manages:
        raise HTTPException(403, f"only the managers of {name} (and admins) set its members' "
                                 f"limits; {who.name} is a {who.role}")
    if name in ctx.settings.billing.accounts:
        raise HTTPException(409, f"the members' limits of {name} come from billing.accounts in "
                                 "the config: change them there")
    user, text = user.strip(), amount.strip()
    if ctx.view.charged_to(user) != name:
        raise HTTPException(400, f"{user or 'the member'} is not a member of {name}")
    billing = ctx.settings.billing
    try:
        monthly = None if text.lower() == "none" else parse_amount(
            text, billing.amount_decimals, billing.max_amount, negative_allowed=False)
        ctx.writer().set_member_limit(name, user, monthly, who.actor, time.time())
    except (ValueError, LedgerError, SchemaError) as exc:
        raise HTTPException(400, f"limit refused: {exc}") from None
    said = f"{user} may spend {monthly if monthly is not None else 'any amount'} a month"
    return RedirectResponse(f"/users/{name}?message={quote_plus(said)}", status_code=303)


@router.post("/admin/accounts/{name}/members")
def members(ctx: Ctx, who: Admin, name: str, user: Annotated[str, Form(max_length=64)] = "",
            action: Annotated[str, Form(pattern="^(add|remove)$")] = "add",
            move: Annotated[bool, Form()] = False, csrf: Annotated[str, Form()] = ""
            ) -> Response:
    """Charge a user to this group account from now on, or no longer."""
    check_csrf(who, csrf)
    config = ctx.settings.billing.accounts.get(name)
    if config is not None and (config.members is not None or config.unix_group is not None):
        raise HTTPException(409, f"{name}'s members come from billing.accounts in the config: "
                                 "change them there")
    user = user.strip()
    current = ctx.view.charged_to(user)
    if not user:
        raise HTTPException(400, "name the user")
    if action == "remove" and current != name:
        raise HTTPException(400, f"{user} is not a member of {name}")
    if action == "add" and current not in (user, name, UNASSIGNED) and not move:
        raise HTTPException(400, f"{user} is charged to {current}; a user is charged to one "
                                 "account (tick move to move them)")
    try:
        ctx.writer().set_membership(user, name if action == "add" else "", who.actor,
                                    time.time())
    except (LedgerError, SchemaError) as exc:
        raise HTTPException(400, f"membership refused: {exc}") from None
    said = f"{user} is charged to {name} from now on" if action == "add" else \
        f"{user} is no longer charged to {name}"
    return RedirectResponse(f"/users/{name}?message={quote_plus(said)}", status_code=303)


@router.get("/admin/administrators")
def administrators(request: Request, ctx: Ctx, who: Admin) -> HTMLResponse:
    """Who may log in, with what role: kept in the config (web.administrators)."""
    named = [(name, a.role, ", ".join(a.accounts))
             for name, a in sorted(ctx.settings.web.administrators.items())]
    if ctx.administrator(LEGACY_ADMIN) and LEGACY_ADMIN not in ctx.settings.web.administrators:
        named.insert(0, (LEGACY_ADMIN, "admin", ""))
    return render_page(request, "administrators.html", who=who, administrators=named)


@router.get("/admin/audit")
def audit(request: Request, ctx: Ctx, who: Finance,
          days: Annotated[int, Query(ge=1, le=3660)] = 31) -> HTMLResponse:
    """Who changed what, newest first."""
    entries = ctx.view.reader.audit_entries(time.time() - days * 86400, 1000)
    return render_page(request, "audit.html", who=who, entries=entries, days=days, iso=iso)
