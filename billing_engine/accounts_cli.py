"""gpuacct-billing's account commands: open, fund (recharge), freeze, close and reopen
accounts, name owners, move members, set members' monthly limits; statements; the audit."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, get_args

from gpuacct.config import BillingSettings
from gpuacct.money import parse_amount
from gpuacct.periods import iso, month_start, parse_month, parse_time
from gpuacct.tiers import account_tier
from ledger import Ledger, LedgerError
from reports.statement import Format, render

STATUS = {"freeze": "frozen", "thaw": "open", "close": "closed", "reopen": "open"}
COMMANDS = ("account", "statement", "audit")


def add_parsers(sub: Any) -> None:
    account = sub.add_parser("account", help="open, freeze, close accounts; members, limits")
    verbs = account.add_subparsers(dest="verb", metavar="VERB", required=True)
    opened = verbs.add_parser("open", help="a personal account (named after its user) or, "
                              "with --group, a group account that pays for its members")
    opened.add_argument("name")
    opened.add_argument("--group", action="store_true")
    opened.add_argument("--owner", help="who answers for it (default: the user / nobody)")
    opened.add_argument("--balance", default="0", help="opening balance (default 0)")
    verbs.add_parser("show", help="an account and its members").add_argument("name")
    for verb, text in (("freeze", "its users may start no GPU work"), ("thaw", "unfreeze"),
                       ("close", "it takes no more usage or money"), ("reopen", "undo close")):
        cmd = verbs.add_parser(verb, help=text)
        cmd.add_argument("name")
        cmd.add_argument("--reason", default="")
    owner = verbs.add_parser("owner", help="name who answers for the account")
    owner.add_argument("name")
    owner.add_argument("owner")
    for verb, text in (("add-member", "charge a user to this account from now on"),
                       ("remove-member", "back to their own account from now on"),
                       ("limit", "a member's monthly spending limit, or none")):
        member = verbs.add_parser(verb, help=text)
        member.add_argument("name")
        member.add_argument("user")
    verbs.choices["add-member"].add_argument("--move", action="store_true",
                                             help="also when they are in another account")
    verbs.choices["limit"].add_argument("amount", help="money per calendar month (UTC), or none")
    statement = sub.add_parser("statement", help="an account's monthly statement")
    statement.add_argument("--account", required=True)
    statement.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    statement.add_argument("--format", choices=get_args(Format), default="csv")
    statement.add_argument("--output", type=Path, help="file to write (default: stdout)")
    audit = sub.add_parser("audit", help="who changed what, newest first")
    audit.add_argument("--since", default="1970-01-01", metavar="DATE")
    audit.add_argument("--limit", type=int, default=200)
    for cmd in (*verbs.choices.values(), sub.choices["recharge"], sub.choices["adjust"]):
        cmd.add_argument("--actor", help="who is making the change (default: your login)")


def actor(args: argparse.Namespace) -> str:
    """The person behind a change: --actor, else the login (the one sudo was run by)."""
    given: str | None = getattr(args, "actor", None)
    return given or f"{os.environ.get('SUDO_USER') or getpass.getuser()} (cli)"


def main(command: str, args: argparse.Namespace, billing: BillingSettings,
         open_ledger: Callable[[BillingSettings], Ledger]) -> int:
    ledger = open_ledger(billing)
    try:
        if command == "statement":
            return statement(ledger, args)
        if command == "audit":
            return audit(ledger, parse_time(args.since), args.limit)
        return account(ledger, billing, args)
    finally:
        ledger.close()


def _managed(billing: BillingSettings, name: str) -> None:
    config = billing.accounts.get(name)
    if config is not None and (config.members is not None or config.unix_group is not None):
        raise ValueError(f"{name}'s members come from billing.accounts in the config: change "
                         "them there")


def account(ledger: Ledger, billing: BillingSettings, args: argparse.Namespace) -> int:
    now, who, name = time.time(), actor(args), args.name
    if args.verb == "show":
        return show(ledger, billing, name, now)
    if args.verb == "open":
        opening = _opening(args.balance, billing)
        ledger.open_account(name, opening, now, who, "group" if args.group else "personal",
                            args.owner if args.owner is not None else
                            ("" if args.group else name))
        print(f"{name}: opened ({'group' if args.group else 'personal'}), balance {opening}")
    elif args.verb in STATUS:
        ledger.set_status(name, STATUS[args.verb], who, now, args.reason)  # type: ignore[arg-type]
        print(f"{name}: {STATUS[args.verb]}")
    elif args.verb == "owner":
        ledger.set_owner(name, args.owner, who, now)
        print(f"{name}: owner {args.owner}")
    elif args.verb in ("add-member", "remove-member"):
        _managed(billing, name)
        current = ledger.charged_to(now).get(args.user)
        if args.verb == "remove-member":
            if current != name:
                raise ValueError(f"{args.user} is not a member of {name}")
            ledger.set_membership(args.user, "", who, now)
            print(f"{args.user}: no longer charged to {name}")
        elif current not in (None, args.user, name, "unassigned") and not args.move:
            raise ValueError(f"{args.user} is charged to {current}; a user is charged to one "
                             "account (--move to move them)")
        else:
            ledger.set_membership(args.user, name, who, now)
            print(f"{args.user}: charged to {name} from {iso(now)}")
    else:  # limit
        _managed(billing, name)
        text = args.amount.strip()
        monthly = None if text.lower() == "none" else parse_amount(
            text, billing.amount_decimals, billing.max_amount, negative_allowed=False)
        if monthly is not None and args.user not in ledger.members(name, now):
            raise ValueError(f"{args.user} is not a member of {name}")
        ledger.set_member_limit(name, args.user, monthly, who, now)
        print(f"{name}: {args.user} may spend {monthly or 'any amount'} a month")
    return 0


def _opening(text: str, billing: BillingSettings) -> Decimal:
    """An opening balance may be 0, which no recharge may be."""
    with contextlib.suppress(InvalidOperation):
        if Decimal(text.strip()) == 0:
            return Decimal(0)
    return parse_amount(text, billing.amount_decimals, billing.max_amount,
                        negative_allowed=False)


def show(ledger: Ledger, billing: BillingSettings, name: str, now: float) -> int:
    found = ledger.account(name)
    if found is None:
        raise LedgerError(f"unknown account {name!r}: no such account in the ledger")
    print(f"account  {found.name} ({found.kind}, {found.status})")
    print(f"owner    {found.owner or '-'}")
    print(f"balance  {found.balance}  tier {account_tier(billing, name, found.balance)}")
    months = {m.user: m for m in ledger.member_months(month_start(now), name)}
    for user in ledger.members(name, now) or ([name] if found.kind == "personal" else []):
        month = months.get(user)
        spent = month.cost if month else 0
        limit = f" of {month.limit}" if month and month.limit is not None else ""
        print(f"member   {user:<24} this month {spent}{limit}")
    return 0


def statement(ledger: Ledger, args: argparse.Namespace) -> int:
    month = parse_month(args.month)
    found = ledger.statement(args.account, month)
    if found is None:
        raise LedgerError(f"unknown account {args.account!r}: no such account in the ledger")
    data = render(found, args.format, time.time())
    if args.output is None:
        sys.stdout.buffer.write(data)
    else:
        args.output.write_bytes(data)
        print(f"statement of {args.account} for {args.month} written to {args.output}")
    return 0


def audit(ledger: Ledger, since: float, limit: int) -> int:
    print(f"{'when (UTC)':<20} {'actor':<28} {'action':<16} {'target':<20} detail")
    for entry in ledger.audit_entries(since, limit):
        print(f"{iso(entry.at):<20} {entry.actor:<28} {entry.action:<16} {entry.target:<20} "
              f"{entry.detail}")
    return 0
