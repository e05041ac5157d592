"""Recharges and adjustments: the only changes the web makes, validated before anything is
written, each one transaction in the ledger."""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal

from gpuacct.money import parse_amount
from gpuacct.notices import NOTICES_PATH, ToldEvent
from ledger import LedgerError, Posting, SchemaError
from web.deps import Context, fmt
from web.live import EnforcerRefused

log = logging.getLogger(__name__)


class Refused(Exception):
    """Why a change was refused; nothing was written."""


def post_money(ctx: Context, user: str, kind: Posting, amount_text: str, reason: str,
               actor: str, key: str | None = None) -> Decimal:
    """The new balance; Refused (nothing changed) for a bad amount, reason or user."""
    billing = ctx.settings.billing
    try:
        amount = parse_amount(amount_text, billing.amount_decimals, billing.max_amount,
                              negative_allowed=kind == "adjustment")
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if kind == "adjustment" and not reason.strip():
        raise Refused("an adjustment needs a reason")
    if len(reason) > 500:
        raise Refused("the reason is longer than 500 characters")
    if ctx.view.account(user) is None:
        raise Refused(f"there is no account {user!r}")
    key = key or f"web-{kind}:{uuid.uuid4()}"
    try:
        balance = ctx.writer().post(user, kind, amount, time.time(), key, reason.strip(),
                                    actor=actor)
    except (LedgerError, SchemaError) as exc:
        raise Refused(str(exc)) from None
    if kind == "recharge":
        _tell_recharge(ctx, user, amount, balance, key)
    return balance


def _tell_recharge(ctx: Context, account: str, amount: Decimal, balance: Decimal,
                   key: str) -> None:
    """The holder of a personal account hears of its recharge (once per recharge); the
    recharge stands if the enforcer cannot be told."""
    found = ctx.view.account(account)
    if found is None or found.kind != "personal" or not ctx.live.enforcer_url:
        return
    event = ToldEvent(event=f"recharge:{key}", user=account,
                      subject=f"{account}'s account was recharged with {fmt(amount)}",
                      body=f"{fmt(amount)} was added to {account}'s account; its balance is "
                           f"{fmt(balance)} now.")
    try:
        ctx.live.call("POST", NOTICES_PATH, event)
    except EnforcerRefused as exc:
        log.warning("the recharge of %s is not told to them: %s", account, exc)
