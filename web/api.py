"""The JSON API under /api/v1: the pages' data, for scripts, gpuacct-balance and the hook.
Same rules as the pages: administrators see everything, a user only their own account; a
change needs an administrator's session and its CSRF token in `X-CSRF-Token`."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query
from pydantic import BaseModel, Field

from gpuacct.allocation import Entry
from ledger import Posting
from web import prices
from web.actions import Refused, post_money
from web.deps import Admin, Ctx, Finance, Someone, Staff, Who, check_csrf, may_see, visible
from web.live import NodeRow
from web.prices import PriceEntry, PriceIn
from web.queries import Transaction
from web.status import AccountStatus

router = APIRouter(prefix="/api/v1", tags=["accounts"])


class Transactions(BaseModel):
    total: int
    page: int
    items: list[Transaction]


class MoneyIn(BaseModel):
    amount: str = Field(max_length=64, description="a decimal number, e.g. 25.00")
    reason: str = Field(default="", max_length=500)
    idempotency_key: str | None = Field(default=None, max_length=128)


class Balance(BaseModel):
    user: str
    balance: Decimal


def _account(ctx: Ctx, user: str) -> AccountStatus:
    """The account the user is charged to (a personal account's name is its user's)."""
    account = ctx.accounts.for_user(user)
    if account is None:
        raise HTTPException(404, f"there is no account {user!r}")
    return account


@router.get("/accounts")
def accounts(ctx: Ctx, who: Staff) -> list[AccountStatus]:
    return visible(who, ctx, ctx.accounts.overview().accounts)


@router.get("/accounts/{user}")
def account(ctx: Ctx, who: Who, user: str) -> AccountStatus:
    may_see(who, user, ctx)
    return _account(ctx, user)


@router.get("/accounts/{user}/transactions")
def transactions(ctx: Ctx, who: Who, user: str,
                 page: Annotated[int, Query(ge=0, le=100_000)] = 0) -> Transactions:
    may_see(who, user, ctx)
    items, total = ctx.view.transactions(_account(ctx, user).user, page,
                                         ctx.settings.web.page_size)
    return Transactions(total=total, page=page, items=items)


def _post(ctx: Ctx, who: Finance, user: str, kind: Posting, body: MoneyIn,
          csrf: str | None) -> Balance:
    check_csrf(who, csrf)
    _account(ctx, user)
    try:
        balance = post_money(ctx, user, kind, body.amount, body.reason, who.actor,
                             body.idempotency_key)
    except Refused as exc:
        raise HTTPException(400, f"{kind} refused: {exc}") from None
    return Balance(user=user, balance=balance)


@router.post("/accounts/{user}/recharge")
def recharge(ctx: Ctx, who: Finance, user: str, body: MoneyIn,
             x_csrf_token: Annotated[str | None, Header()] = None) -> Balance:
    return _post(ctx, who, user, "recharge", body, x_csrf_token)


@router.post("/accounts/{user}/adjust")
def adjust(ctx: Ctx, who: Finance, user: str, body: MoneyIn,
           x_csrf_token: Annotated[str | None, Header()] = None) -> Balance:
    return _post(ctx, who, user, "adjustment", body, x_csrf_token)


@router.get("/prices", tags=["prices"])
def price_history(ctx: Ctx, who: Someone) -> list[PriceEntry]:
    return prices.history(ctx)


@router.post("/prices", tags=["prices"], status_code=201)
def add_prices(ctx: Ctx, who: Finance, body: PriceIn,
               x_csrf_token: Annotated[str | None, Header()] = None) -> list[PriceEntry]:
    """A new price version, in force from `effective` (not before now); the new history."""
    check_csrf(who, x_csrf_token)
    try:
        prices.add(ctx, body.model_dump(), who.actor)
    except Refused as exc:
        raise HTTPException(400, f"new prices refused: {exc}") from None
    return prices.history(ctx)


class Nodes(BaseModel):
    nodes: list[NodeRow]
    problem: str | None = Field(description="why `nodes` is empty: Prometheus was not reached")


@router.get("/nodes", tags=["nodes"])
def nodes(ctx: Ctx, who: Admin) -> Nodes:
    answer = ctx.live.nodes()
    return Nodes(nodes=answer.value, problem=answer.problem)


class Reservations(BaseModel):
    entries: list[Entry] = Field(description="reservations and queued requests, in queue order")
    problem: str | None = Field(description="why `entries` is empty: the enforcer was not asked")


@router.get("/reservations", tags=["reservations"])
def reservations(ctx: Ctx, who: Who) -> Reservations:
    """GPU reservations and the queue: everyone's for administrators, else the user's own."""
    if not who.admin and not who.user:
        raise HTTPException(403, "log in, or come through the proxy that names you")
    answer = ctx.live.reservations()
    entries = [e for e in (answer.value.entries if answer.value else ())
               if who.role == "admin" or e.user == who.user]
    return Reservations(entries=entries, problem=answer.problem)
