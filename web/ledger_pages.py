"""The administrators' statements and audit pages, read through the ledger's read-only handle."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from billing_engine.ledger import iso, month_start
from billing_engine.ledger.statement import Format, month_name, parse_month, render
from web.deps import Admin, Ctx
from web.pages import render as render_page

router = APIRouter(include_in_schema=False)
MEDIA = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8",
         "pdf": "application/pdf"}


@router.get("/admin/accounts/{name}/statement")
def statement(ctx: Ctx, who: Admin, name: str,
              month: Annotated[str, Query(max_length=20)] = "",
              format: Annotated[Format, Query()] = "html") -> Response:
    """The account's monthly statement (this month without ?month=)."""
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


@router.get("/admin/audit")
def audit(request: Request, ctx: Ctx, who: Admin,
          days: Annotated[int, Query(ge=1, le=3660)] = 31) -> HTMLResponse:
    """Who changed what, newest first."""
    entries = ctx.view.reader.audit_entries(time.time() - days * 86400, 1000)
    return render_page(request, "audit.html", who=who, entries=entries, days=days, iso=iso)
