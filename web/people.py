"""Pages for users themselves: the one-time link from a node, their notice settings, the
prices, and their own usage and transactions as CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from gpuacct.config import describe_error
from gpuacct.login import LINK_PATH, REDEEM_PATH, Redeem, Redeemed
from gpuacct.notices import NoticeChoice
from web import export, prices
from web.deps import Ctx, Someone, Who, check_csrf, client_address, may_change, may_see
from web.live import EnforcerRefused
from web.pages import audit, logged_in, render

router = APIRouter(include_in_schema=False)


@router.get(LINK_PATH + "{token}")
def link(request: Request, ctx: Ctx, token: str) -> Response:
    """A link `gpuacct web` printed: a session for its user, once."""
    try:
        asked = Redeem(token=token)
    except ValidationError:
        raise HTTPException(410, "this is not a link gpuacct gave: run `gpuacct web` on a node "
                                 "for a new one") from None
    try:
        who = Redeemed.model_validate(ctx.live.call("POST", REDEEM_PATH, asked))
    except EnforcerRefused as exc:
        if exc.status is None or exc.status >= 500:
            raise HTTPException(503, f"logins by link are unavailable now: {exc}") from None
        raise HTTPException(410, str(exc)) from None
    client = client_address(request, ctx)
    audit(ctx, f"{who.user} (web)", "login", who.user,
          f"from {client}, through a link from {who.node}")
    return logged_in(request, ctx.sessions.new(user=who.user)[0], f"/users/{who.user}")


@router.post("/users/{user}/notices")
def choose_notices(ctx: Ctx, who: Who, user: str, csrf: Annotated[str, Form()] = "",
                   address: Annotated[str, Form(max_length=254)] = "",
                   channels: Annotated[list[str] | None, Form()] = None) -> Response:
    """A user's own address and channels; nobody else's, except by an admin."""
    may_change(who, user, "notices")
    check_csrf(who, csrf)
    try:
        choice = NoticeChoice(address=address.strip() or None, channels=channels or [])
    except ValidationError as exc:
        if any(e["loc"][0] == "address" for e in exc.errors()):
            raise HTTPException(400, f"address {address!r}: expected one address, such as "
                                     "alice@example.org") from None
        raise HTTPException(400, f"notice settings refused: {describe_error(exc.errors()[0])}"
                            ) from None
    try:
        ctx.live.call("PUT", f"/v1/notices/settings/{user}", choice)
    except EnforcerRefused as exc:
        raise HTTPException(400 if exc.status == 400 else 503,
                            f"notice settings not saved: {exc}") from None
    return RedirectResponse(f"/users/{user}?message=notice+settings+saved", status_code=303)


@router.get("/prices")
def prices_for_everyone(request: Request, ctx: Ctx, who: Someone) -> HTMLResponse:
    return render(request, "prices.html", who=who, history=prices.history(ctx), message=None,
                  error=None, form={})


@router.get("/users/{user}/export/{what}.csv")
def own_csv(ctx: Ctx, who: Who, user: str, what: str,
            start: Annotated[str, Query(alias="from")],
            end: Annotated[str, Query(alias="to")]) -> Response:
    may_see(who, user, ctx)
    return export.csv_response(ctx, what, start, end, user=user)
