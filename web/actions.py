"""Recharges and adjustments: the only changes the web makes, validated before anything is
written, each one transaction in the ledger."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

from billing_engine.ledger import LedgerError, Posting, SchemaError
from gpuacct.money import parse_amount
from web.deps import Context


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
    try:
        return ctx.writer().post(user, kind, amount, time.time(),
                                 key or f"web-{kind}:{uuid.uuid4()}", reason.strip(),
                                 actor=actor)
    except (LedgerError, SchemaError) as exc:
        raise Refused(str(exc)) from None
