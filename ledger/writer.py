"""Every change to the ledger. Opening the writer migrates the file to the current schema.

Balances change only together with a transaction row (opening, charge, recharge, adjustment,
refund) carrying a unique idempotency key, so `balance = sum of its account's transactions`
holds after any crash. A window is billed in one SQLite transaction: its usage lines, charges,
cursors, its outbox row and its `windows` row commit together or not at all.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from gpuacct import store
from gpuacct.config import PriceVersion
from gpuacct.periods import DAY, iso, month_start, week_start
from ledger import schema
from ledger.reader import ReadOnlyLedger
from ledger.records import (
    BILLING,
    UNASSIGNED,
    AccountKind,
    AccountPlan,
    Kind,
    LeaseLost,
    LedgerError,
    Status,
    WindowBill,
)


class Ledger(ReadOnlyLedger):
    """Implements `LedgerWriter` (and, on the same connection, `LedgerReader`) on SQLite."""

    def __init__(self, path: store.Target, migrate: bool = True) -> None:
        """`migrate=False` for a process that writes but does not own the schema (the web):
        the file must be of the current version already."""
        super().__init__(path)
        self._writer = store.connect(path, schema="ledger")
        if migrate:
            store.migrate(self._writer, schema.MIGRATIONS, f"ledger {self.where}")
        else:
            store.require_version(self._writer, schema.VERSION, f"ledger {self.where}")
        self._lock = threading.RLock()  # one writer thread at a time on the connection

    def _db(self) -> store.Database:
        return self._writer

    def close(self) -> None:
        self._writer.close()
        super().close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The changes made inside commit together or not at all."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[store.Database]:
        with self._lock:
            if self._writer.in_transaction:  # inside batch(): part of its transaction
                yield self._writer
                return
            with store.transaction(self._writer) as db:
                yield db

    def _set_meta(self, db: store.Database, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ($1, $2) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # -- the billing lease: one engine bills at a time
    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            return store.take_lease(db, holder, seconds, now)

    def release_lease(self, holder: str) -> None:
        with self._tx() as db:
            store.drop_lease(db, holder)

    def lease_holder(self) -> str | None:
        with self._tx() as db:
            return store.lease_holder(db, time.time())

    def _holds_lease(self, db: store.Database, holder: str) -> bool:
        return store.lease_holder(db, time.time()) == holder

    # -- billing
    def _move_cursors(self, db: store.Database, values: dict[str, Decimal],
                      end: int, births: dict[str, float]) -> None:
        db.insert_rows("cursors (series, value, window_end)",
                       [(key, str(value), end) for key, value in values.items()],
                       "ON CONFLICT (series) DO UPDATE SET value = excluded.value, "
                       "window_end = excluded.window_end")
        db.executemany("UPDATE cursors SET created = $1 WHERE series = $2",
                       [(born, key) for key, born in births.items()])

    def begin_billing(self, start: int, cursors: dict[str, Decimal],
                      births: dict[str, float] | None = None) -> bool:
        """Billing begins at `start`, every counter baselined at its value then; False (and
        nothing written) if it had begun already."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'billing_start'").fetchone():
                return False
            self._move_cursors(db, cursors, start, births or {})
            self._set_meta(db, "billing_start", str(start))
            return True

    def commit_window(self, bill: WindowBill) -> bool:
        """Write the window; False (and nothing written) if the ledger moved on since the
        cursors were read: a window is never billed twice. LeaseLost if another engine bills.
        Each user's usage goes to the account their membership at the window's start names."""
        now = time.time()
        with self._tx() as db:
            if not self._holds_lease(db, bill.holder):
                raise LeaseLost("the billing lease went to another engine")
            last = self.last_window()
            if last != bill.expected_last or (last is not None and last >= bill.end):
                return False
            to = self._charged_to(db, {ln.user for ln in bill.lines}, bill, now)
            charges: dict[str, Decimal] = defaultdict(Decimal)
            for line in bill.lines:
                charges[to[line.user]] += line.cost
            db.insert_rows(
                'usage_lines (window_end, "user", job, node, gpu_model, gpu_seconds, '
                "cpu_core_seconds, cost, price_effective, gpu_idle_seconds, idle_cost, account)",
                [(bill.end, ln.user, ln.job, ln.node, ln.gpu_model, str(ln.gpu_seconds),
                  str(ln.cpu_core_seconds), str(ln.cost), bill.price_effective,
                  str(ln.gpu_idle_seconds), str(ln.idle_cost), to[ln.user])
                 for ln in bill.lines])
            total = sum(charges.values(), Decimal(0))
            if not bill.trial_mode:
                self._charge_window(db, {a: c for a, c in charges.items() if c}, now,
                                    bill.end, bill.reason)
                charged = Decimal(self._meta("charged_total") or 0) + total
                self._set_meta(db, "charged_total", str(charged))
            self._add_to_week(db, bill)
            self._add_to_month(db, bill, to)
            self._move_cursors(db, bill.cursors, bill.end, bill.births)
            db.execute("INSERT INTO windows (window_end, window_start, billed_at, lines, cost) "
                       "VALUES ($1, $2, $3, $4, $5)",
                       (bill.end, bill.previous, now, len(bill.lines), str(total)))
            if bill.lines:
                db.execute("INSERT INTO influx_outbox (window_end) VALUES ($1)", (bill.end,))
        return True

    def roll_up_day(self, before: int) -> int | None:
        """Roll the oldest day of usage lines ending before `before` (a UTC midnight) up into a
        line per user, job, node, GPU model and account, in one transaction that deletes the
        lines it sums: every sum over whole days (balances, statements, exports, the weekly and
        monthly sums) stays as it was. The day rolled, or None: none is due, or its points still
        wait for InfluxDB."""
        with self._tx() as db:
            since = int(self._meta("rolled_until") or 0)
            first = db.execute("SELECT MIN(window_end) FROM usage_lines WHERE window_end >= $1",
                               (since,)).fetchone()[0]
            if first is None or first // DAY * DAY + DAY > before:
                return None
            day = int(first) // DAY * DAY
            span = (day, day + DAY)
            if db.execute("SELECT 1 FROM influx_outbox WHERE window_end >= $1 AND window_end < $2",
                          span).fetchone():
                return None
            rolled: dict[tuple[str, ...], list[Any]] = {}
            for (user, job, node, model, account, end, start, price, *numbers) in db.execute(
                    'SELECT u."user", u.job, u.node, u.gpu_model, u.account, u.window_end, '
                    "COALESCE(u.covers_from, w.window_start), u.price_effective, u.gpu_seconds, "
                    "u.cpu_core_seconds, u.cost, u.gpu_idle_seconds, u.idle_cost "
                    "FROM usage_lines u JOIN windows w USING (window_end) "
                    "WHERE u.window_end >= $1 AND u.window_end < $2", span):
                line = rolled.setdefault((user, job, node, model, account),
                                         [end, start, price, *[Decimal(0)] * 5])
                if end > line[0]:
                    line[0], line[2] = end, price  # the latest window and its price
                line[1] = min(line[1], start)
                for i, value in enumerate(numbers, 3):
                    line[i] += Decimal(value)
            db.execute("DELETE FROM usage_lines WHERE window_end >= $1 AND window_end < $2", span)
            # One user is charged to one account in a window: each line's latest window is
            # its own, so no two rolled lines share a key.
            db.insert_rows(
                'usage_lines ("user", job, node, gpu_model, account, window_end, '
                "covers_from, price_effective, gpu_seconds, cpu_core_seconds, cost, "
                "gpu_idle_seconds, idle_cost)",
                [(*key, end, start, price, *map(str, numbers))
                 for key, (end, start, price, *numbers) in rolled.items()])
            self._set_meta(db, "rolled_until", str(day + DAY))
            return day

    def _charged_to(self, db: store.Database, users: set[str], bill: WindowBill,
                    now: float) -> dict[str, str]:
        """Each user's account for a window: their membership at its start, else their own
        account, else the first membership that began within the window (a member added
        mid-window, as the config is synced when the engine starts, is never given an account
        of their own for it), else `unknown_users` decides (and the user becomes that
        account's member). A closed account takes nothing: its users' usage goes to the
        unassigned account."""
        found = self.charged_to(bill.previous)
        for user, account in db.execute(
                'SELECT "user", account FROM memberships m WHERE effective = (SELECT '
                'MIN(effective) FROM memberships WHERE "user" = m."user" AND effective > $1 '
                "AND effective < $2 AND account <> '')", (bill.previous, bill.end)):
            found.setdefault(user, account)
        status = dict(db.execute("SELECT name, status FROM accounts").fetchall())
        to: dict[str, str] = {}
        for user in sorted(users):
            account = found.get(user)
            if account is not None and status[account] != "closed":
                to[user] = account
                continue
            policy = bill.unknown_users
            if account is None and policy == "open" and user not in status:
                self._open_account(db, user, bill.opening_balance, now, BILLING)
                status[user] = "open"
                to[user] = user
                continue
            target = policy.removeprefix("account:") if policy.startswith("account:") else ""
            if account is not None or status.get(target, "closed") == "closed":
                target = UNASSIGNED  # closed, refused, or a name taken by another account
            if target not in status:  # only the unassigned account is opened here
                self._open_account(db, UNASSIGNED, Decimal(0), now, BILLING, kind="unassigned")
                status[target] = "open"
            self._join(db, user, target, bill.previous, f"{BILLING} (unknown_users)")
            to[user] = target
        return to

    def _join(self, db: store.Database, user: str, account: str, effective: float,
              actor: str) -> None:
        db.execute('INSERT INTO memberships ("user", effective, account, actor) '
                   "VALUES ($1, $2, $3, $4) "
                   'ON CONFLICT ("user", effective) DO UPDATE SET account = excluded.account, '
                   "actor = excluded.actor", (user, effective, account, actor))
        self._audit(db, effective, actor, "membership", user, f"charged to {account or 'own'}")

    def _add_to_week(self, db: store.Database, bill: WindowBill) -> None:
        """Add the window's lines to each user's sums for the week it ends in."""
        week = week_start(bill.end)
        users = {ln.user for ln in bill.lines}
        known = schema.week_sums(
            (week, user, *map(Decimal, numbers)) for user, *numbers in db.execute(
                'SELECT "user", gpu_seconds, gpu_idle_seconds, cost, idle_cost FROM weekly_usage '
                "WHERE week_start = $1", (week,)) if user in users)
        schema.write_weeks(db, schema.week_sums(
            ((week, ln.user, ln.gpu_seconds, ln.gpu_idle_seconds, ln.cost, ln.idle_cost)
             for ln in bill.lines), into=known))

    def _add_to_month(self, db: store.Database, bill: WindowBill,
                      to: dict[str, str]) -> None:
        """Add the window's cost to each member's sum for its account and month."""
        month = month_start(bill.end)
        sums = {(month, account, user): Decimal(cost) for account, user, cost in db.execute(
            'SELECT account, "user", cost FROM monthly_usage WHERE month_start = $1', (month,))
            if to.get(user) == account}
        for line in bill.lines:
            key = (month, to[line.user], line.user)
            sums[key] = sums.get(key, Decimal(0)) + line.cost
        schema.write_months(db, sums)

    def _charge_window(self, db: store.Database, charges: dict[str, Decimal], at: float,
                       end: int, reason: str) -> None:
        """A window's charges, one per account, as `post` would make them, in a few statements
        rather than six per account. A key used before fails the UNIQUE constraint: nothing is
        written."""
        accounts = {name: (Decimal(balance), Decimal(charged)) for name, balance, charged
                    in db.execute("SELECT name, balance, charged FROM accounts")}
        updates, rows = [], []
        for name, cost in sorted(charges.items()):
            balance, charged = accounts[name]
            balance -= cost
            updates.append((str(balance), str(charged + cost), name))
            rows.append((name, str(-cost), str(balance), at, reason, end, BILLING,
                         f"charge:{end}:{name}"))
        db.executemany("UPDATE accounts SET balance = $1, charged = $2 WHERE name = $3", updates)
        db.executemany("INSERT INTO transactions (account, kind, amount, balance_after, at, "
                       "reason, window_end, actor, idempotency_key) "
                       "VALUES ($1, 'charge', $2, $3, $4, $5, $6, $7, $8)", rows)

    def outbox_done(self, end: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM influx_outbox WHERE window_end = $1", (end,))

    # -- accounts and money
    def _audit(self, db: store.Database, at: float, actor: str, action: str, target: str,
               detail: str = "") -> None:
        db.execute("INSERT INTO audit (at, actor, action, target, detail) "
                   "VALUES ($1, $2, $3, $4, $5)",
                   (at, actor, action, target, detail))

    def audit(self, actor: str, action: str, target: str, detail: str = "",
              at: float | None = None) -> None:
        """Record what changed nothing in the ledger but is worth knowing (a failed login)."""
        with self._tx() as db:
            self._audit(db, time.time() if at is None else at, actor, action, target, detail)

    def _open_account(self, db: store.Database, name: str, opening: Decimal, at: float,
                      actor: str, kind: AccountKind = "personal", owner: str | None = None
                      ) -> None:
        db.execute("INSERT INTO accounts (name, balance, opened_at, kind, owner) "
                   "VALUES ($1, $2, $3, $4, $5)",
                   (name, str(opening), at, kind, name if owner is None else owner))
        db.execute("INSERT INTO transactions (account, kind, amount, balance_after, at, reason, "
                   "actor, idempotency_key) VALUES ($1, 'opening', $2, $3, $4, 'opening balance', "
                   "$5, $6)", (name, str(opening), str(opening), at, actor, f"opening:{name}"))
        self._audit(db, at, actor, "account.open", name, f"{kind}, opening balance {opening}")

    def open_account(self, name: str, opening: Decimal, at: float, actor: str = BILLING,
                     kind: AccountKind = "personal", owner: str | None = None) -> None:
        """A personal account is named after its user, who is charged to it from now on."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE name = $1", (name,)).fetchone():
                raise LedgerError(f"the account {name!r} exists already")
            if kind == "group" and name in self.charged_to(at):
                raise LedgerError(f"{name!r} is a user's name: a group account needs another")
            self._open_account(db, name, opening, at, actor, kind, owner)
            if kind == "personal" and db.execute(
                    'SELECT 1 FROM memberships WHERE "user" = $1', (name,)).fetchone():
                self._join(db, name, "", at, actor)

    def _account(self, db: store.Database, name: str) -> tuple[str, str]:
        row = db.execute("SELECT kind, status FROM accounts WHERE name = $1", (name,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown account {name!r}: no such account in the ledger")
        return str(row[0]), str(row[1])

    def set_status(self, name: str, status: Status, actor: str, at: float,
                   reason: str = "") -> None:
        """open (thaw), frozen (its users may start no GPU work) or closed (it takes no more
        usage or money; reopening is allowed)."""
        with self._tx() as db:
            _, was = self._account(db, name)
            if was == status:
                raise LedgerError(f"the account {name!r} is {status} already")
            db.execute("UPDATE accounts SET status = $1 WHERE name = $2", (status, name))
            self._audit(db, at, actor, f"account.{status}", name, reason)

    def set_owner(self, name: str, owner: str, actor: str, at: float) -> None:
        with self._tx() as db:
            self._account(db, name)
            db.execute("UPDATE accounts SET owner = $1 WHERE name = $2", (owner, name))
            self._audit(db, at, actor, "account.owner", name, f"owner {owner}")

    def set_membership(self, user: str, account: str, actor: str, at: float) -> None:
        """From `at` on, `user` is charged to `account` ("" for their own, or unknown_users)."""
        with self._tx() as db:
            if account:
                kind, status = self._account(db, account)
                if status == "closed":
                    raise LedgerError(f"the account {account!r} is closed")
                if kind == "personal" and account != user:
                    raise LedgerError(f"{account!r} is {account}'s personal account: only "
                                      f"{account} is charged to it")
            last = self.last_window()
            if last is not None and at < last:
                raise LedgerError("a membership cannot change the past: billed windows keep "
                                  "the membership they were charged by")
            self._join(db, user, "" if account == user else account, at, actor)

    def set_member_limit(self, account: str, user: str, monthly: Decimal | None, actor: str,
                         at: float) -> None:
        with self._tx() as db:
            self._account(db, account)
            self._set_member_limit(db, account, user, monthly, actor, at)

    def _set_member_limit(self, db: store.Database, account: str, user: str,
                          monthly: Decimal | None, actor: str, at: float) -> None:
        if monthly is None:
            db.execute('DELETE FROM member_limits WHERE account = $1 AND "user" = $2',
                       (account, user))
        else:
            db.execute('INSERT INTO member_limits (account, "user", monthly) VALUES ($1, $2, $3) '
                       'ON CONFLICT (account, "user") DO UPDATE SET monthly = excluded.monthly',
                       (account, user, str(monthly)))
        self._audit(db, at, actor, "member.limit", account,
                    f"{user}: {'no limit' if monthly is None else f'{monthly} a month'}")

    def sync_accounts(self, plans: list[AccountPlan], at: float, actor: str) -> int:
        """Make the ledger's group accounts, owners, members and limits agree with the config,
        each change from `at` on; the changes made (0 when they agree already)."""
        changes = 0
        with self._tx() as db:
            owners = dict(db.execute("SELECT name, owner FROM accounts").fetchall())
            for plan in plans:
                if plan.name not in owners:
                    self._open_account(db, plan.name, plan.opening_balance, at, actor, "group",
                                       plan.owner)
                    changes += 1
                elif owners[plan.name] != plan.owner:
                    db.execute("UPDATE accounts SET owner = $1 WHERE name = $2",
                               (plan.owner, plan.name))
                    self._audit(db, at, actor, "account.owner", plan.name, f"owner {plan.owner}")
                    changes += 1
                limits = {u: Decimal(m) for u, m in db.execute(
                    'SELECT "user", monthly FROM member_limits WHERE account = $1', (plan.name,))}
                for user in sorted(limits.keys() | plan.monthly_limits.keys()):
                    if limits.get(user) != plan.monthly_limits.get(user):
                        self._set_member_limit(db, plan.name, user,
                                               plan.monthly_limits.get(user), actor, at)
                        changes += 1
            managed = [p for p in plans if p.members is not None]
            in_force = self.charged_to(at)
            wanted = {user: plan.name for plan in managed for user in plan.members or ()}
            names = {plan.name for plan in managed}
            wanted.update({user: "" for user, account in in_force.items()
                           if account in names and user not in wanted})
            for user, account in sorted(wanted.items()):
                if in_force.get(user, "") != account:
                    self._join(db, user, account, at, actor)
                    changes += 1
        return changes

    def post(self, account: str, kind: Kind, amount: Decimal, at: float, key: str,
             reason: str = "", window_end: int | None = None, actor: str = BILLING) -> Decimal:
        """Add `amount` to the balance, with its transaction row; the new balance."""
        with self._tx() as db:
            row = db.execute("SELECT balance, charged, status FROM accounts WHERE name = $1",
                             (account,)).fetchone()
            if row is None:
                raise LedgerError(f"unknown account {account!r}: no such account in the ledger "
                                  "(open it first: gpuacct-billing account open)")
            if row[2] == "closed":
                raise LedgerError(f"the account {account!r} is closed")
            if db.execute("SELECT 1 FROM transactions WHERE idempotency_key = $1",
                          (key,)).fetchone():
                raise LedgerError(f"idempotency key {key!r} was already used")
            balance = Decimal(row[0]) + amount
            charged = Decimal(row[1]) - amount if kind == "charge" else Decimal(row[1])
            db.execute("UPDATE accounts SET balance = $1, charged = $2 WHERE name = $3",
                       (str(balance), str(charged), account))
            db.execute("INSERT INTO transactions (account, kind, amount, balance_after, at, "
                       "reason, window_end, actor, idempotency_key) "
                       "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                       (account, kind, str(amount), str(balance), at, reason, window_end, actor,
                        key))
            if kind != "charge":  # the engine's charges are the windows themselves
                self._audit(db, at, actor, kind, account, f"{amount:+} {reason}".strip())
            return balance

    # -- prices
    def add_price_version(self, version: PriceVersion, now: float, reason: str,
                          actor: str = BILLING) -> None:
        """Only from now on: a window already billed, or being billed, keeps its price."""
        effective = version.starts()
        with self._tx() as db:
            last = self.last_window()
            if effective < now or (last is not None and effective < last):
                raise LedgerError("prices cannot change the past: the effective time must be "
                                  "now or later")
            if db.execute("SELECT 1 FROM price_versions WHERE effective = $1",
                          (effective,)).fetchone():
                raise LedgerError("a price version with this effective time exists already")
            db.execute("INSERT INTO price_versions (effective, version, created_at, reason) "
                       "VALUES ($1, $2, $3, $4)",
                       (effective, version.model_dump_json(), now, reason))
            self._audit(db, now, actor, "prices", "", f"from {iso(effective)}: {reason}")

    # -- backups
    def backup(self, dest: Path) -> None:
        """A consistent copy while the engine keeps billing (SQLite's online backup), checked
        whole before it is renamed into place: `dest` is either complete or absent."""
        try:
            with self._lock:
                store.backup(self._writer, dest)
        except store.BackupError as exc:
            raise LedgerError(str(exc)) from None
