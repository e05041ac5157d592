"""Every change to the ledger. Opening the writer migrates the file to the current schema.

Balances change only together with a transaction row (opening, charge, recharge, adjustment,
refund) carrying a unique idempotency key, so `balance = sum of its account's transactions`
holds after any crash. A window is billed in one SQLite transaction: its usage lines, charges,
cursors, its outbox row and its `windows` row commit together or not at all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from billing_engine.ledger import schema
from billing_engine.ledger.reader import SqliteLedgerReader
from billing_engine.ledger.records import Kind, LeaseLost, LedgerError, WindowBill
from gpuacct import sqlite
from gpuacct.config import PriceVersion


class Ledger(SqliteLedgerReader):
    """Implements `LedgerWriter` (and, on the same connection, `LedgerReader`) on SQLite."""

    def __init__(self, path: Path, migrate: bool = True) -> None:
        """`migrate=False` for a process that writes but does not own the schema (the web):
        the file must be of the current version already."""
        super().__init__(path)
        self._writer = sqlite.connect(path)
        if migrate:
            sqlite.migrate(self._writer, schema.MIGRATIONS, f"ledger {path}")
        else:
            sqlite.require_version(self._writer, schema.VERSION, f"ledger {path}")
        self._lock = threading.RLock()  # one writer thread at a time on the connection

    def _db(self) -> sqlite3.Connection:
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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._writer.in_transaction:  # inside batch(): part of its transaction
                yield self._writer
                return
            with sqlite.transaction(self._writer) as db:
                yield db

    def _set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # -- the billing lease: one engine bills at a time
    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute("INSERT INTO lease (id, holder, expires) VALUES (1, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
                       "expires = excluded.expires", (holder, now + seconds))
            return True

    def release_lease(self, holder: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM lease WHERE id = 1 AND holder = ?", (holder,))

    def _holds_lease(self, db: sqlite3.Connection, holder: str) -> bool:
        row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
        return row is not None and row[0] == holder and row[1] > time.time()

    # -- billing
    def _move_cursors(self, db: sqlite3.Connection, values: dict[str, Decimal],
                      end: int) -> None:
        db.executemany("INSERT INTO cursors (series, value, window_end) VALUES (?, ?, ?) "
                       "ON CONFLICT (series) DO UPDATE SET value = excluded.value, "
                       "window_end = excluded.window_end",
                       [(key, str(value), end) for key, value in values.items()])

    def begin_billing(self, start: int, cursors: dict[str, Decimal]) -> bool:
        """Billing begins at `start`, every counter baselined at its value then; False (and
        nothing written) if it had begun already."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'billing_start'").fetchone():
                return False
            self._move_cursors(db, cursors, start)
            self._set_meta(db, "billing_start", str(start))
            return True

    def commit_window(self, bill: WindowBill) -> bool:
        """Write the window; False (and nothing written) if the ledger moved on since the
        cursors were read: a window is never billed twice. LeaseLost if another engine bills."""
        now = time.time()
        charges: dict[str, Decimal] = defaultdict(Decimal)
        for line in bill.lines:
            charges[line.user] += line.cost
        with self._tx() as db:
            if not self._holds_lease(db, bill.holder):
                raise LeaseLost("the billing lease went to another engine")
            last = self.last_window()
            if last != bill.expected_last or (last is not None and last >= bill.end):
                return False
            known = {u for (u,) in db.execute("SELECT user FROM accounts")}
            for user in sorted(charges.keys() - known):
                self._open_account(db, user, bill.opening_balance, now)
            db.executemany(
                "INSERT INTO usage_lines (window_end, user, job, node, gpu_model, gpu_seconds, "
                "cpu_core_seconds, cost, price_effective, gpu_idle_seconds, idle_cost) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(bill.end, ln.user, ln.job, ln.node, ln.gpu_model, str(ln.gpu_seconds),
                  str(ln.cpu_core_seconds), str(ln.cost), bill.price_effective,
                  str(ln.gpu_idle_seconds), str(ln.idle_cost))
                 for ln in bill.lines])
            total = sum(charges.values(), Decimal(0))
            if not bill.trial_mode:
                self._charge_window(db, {u: c for u, c in charges.items() if c}, now,
                                    bill.end, bill.reason)
                charged = Decimal(self._meta("charged_total") or 0) + total
                self._set_meta(db, "charged_total", str(charged))
            self._add_to_week(db, bill)
            self._move_cursors(db, bill.cursors, bill.end)
            db.execute("INSERT INTO windows (window_end, window_start, billed_at, lines, cost) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (bill.end, bill.previous, now, len(bill.lines), str(total)))
            if bill.lines:
                db.execute("INSERT INTO influx_outbox (window_end) VALUES (?)", (bill.end,))
        return True

    def _add_to_week(self, db: sqlite3.Connection, bill: WindowBill) -> None:
        """Add the window's lines to each user's sums for the week it ends in."""
        week = schema.week_start(bill.end)
        users = {ln.user for ln in bill.lines}
        known = schema.week_sums(
            (week, user, *map(Decimal, numbers)) for user, *numbers in db.execute(
                "SELECT user, gpu_seconds, gpu_idle_seconds, cost, idle_cost FROM weekly_usage "
                "WHERE week_start = ?", (week,)) if user in users)
        schema.write_weeks(db, schema.week_sums(
            ((week, ln.user, ln.gpu_seconds, ln.gpu_idle_seconds, ln.cost, ln.idle_cost)
             for ln in bill.lines), into=known))

    def _charge_window(self, db: sqlite3.Connection, charges: dict[str, Decimal], at: float,
                       end: int, reason: str) -> None:
        """A window's charges, one per user, as `post` would make them, in a few statements
        rather than six per user. A key used before fails the UNIQUE constraint: nothing is
        written."""
        accounts = {user: (Decimal(balance), Decimal(charged)) for user, balance, charged
                    in db.execute("SELECT user, balance, charged FROM accounts")}
        updates, rows = [], []
        for user, cost in sorted(charges.items()):
            if user not in accounts:
                raise LedgerError(f"unknown user {user!r}: no account in the ledger")
            balance, charged = accounts[user]
            balance -= cost
            updates.append((str(balance), str(charged + cost), user))
            rows.append((user, str(-cost), str(balance), at, reason, end,
                         f"charge:{end}:{user}"))
        db.executemany("UPDATE accounts SET balance = ?, charged = ? WHERE user = ?", updates)
        db.executemany("INSERT INTO transactions (user, kind, amount, balance_after, at, reason, "
                       "window_end, idempotency_key) VALUES (?, 'charge', ?, ?, ?, ?, ?, ?)",
                       rows)

    def outbox_done(self, end: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM influx_outbox WHERE window_end = ?", (end,))

    # -- accounts and money
    def _open_account(self, db: sqlite3.Connection, user: str, opening: Decimal,
                      at: float) -> None:
        db.execute("INSERT INTO accounts (user, balance, opened_at) VALUES (?, ?, ?)",
                   (user, str(opening), at))
        db.execute("INSERT INTO transactions (user, kind, amount, balance_after, at, reason, "
                   "idempotency_key) VALUES (?, 'opening', ?, ?, ?, 'opening balance', ?)",
                   (user, str(opening), str(opening), at, f"opening:{user}"))

    def open_account(self, user: str, opening: Decimal, at: float) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM accounts WHERE user = ?", (user,)).fetchone():
                raise LedgerError(f"the account {user!r} exists already")
            self._open_account(db, user, opening, at)

    def post(self, user: str, kind: Kind, amount: Decimal, at: float, key: str,
             reason: str = "", window_end: int | None = None) -> Decimal:
        """Add `amount` to the balance, with its transaction row; the new balance."""
        with self._tx() as db:
            row = db.execute("SELECT balance, charged FROM accounts WHERE user = ?",
                             (user,)).fetchone()
            if row is None:
                raise LedgerError(f"unknown user {user!r}: no account in the ledger")
            if db.execute("SELECT 1 FROM transactions WHERE idempotency_key = ?",
                          (key,)).fetchone():
                raise LedgerError(f"idempotency key {key!r} was already used")
            balance = Decimal(row[0]) + amount
            charged = Decimal(row[1]) - amount if kind == "charge" else Decimal(row[1])
            db.execute("UPDATE accounts SET balance = ?, charged = ? WHERE user = ?",
                       (str(balance), str(charged), user))
            db.execute("INSERT INTO transactions (user, kind, amount, balance_after, at, "
                       "reason, window_end, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (user, kind, str(amount), str(balance), at, reason, window_end, key))
            return balance

    # -- prices
    def add_price_version(self, version: PriceVersion, now: float, reason: str) -> None:
        """Only from now on: a window already billed, or being billed, keeps its price."""
        effective = version.starts()
        with self._tx() as db:
            last = self.last_window()
            if effective < now or (last is not None and effective < last):
                raise LedgerError("prices cannot change the past: the effective time must be "
                                  "now or later")
            if db.execute("SELECT 1 FROM price_versions WHERE effective = ?",
                          (effective,)).fetchone():
                raise LedgerError("a price version with this effective time exists already")
            db.execute("INSERT INTO price_versions (effective, version, created_at, reason) "
                       "VALUES (?, ?, ?, ?)", (effective, version.model_dump_json(), now, reason))

    # -- backups
    def backup(self, dest: Path) -> None:
        """A consistent copy while the engine keeps billing (SQLite's online backup), checked
        whole before it is renamed into place: `dest` is either complete or absent."""
        try:
            with self._lock:
                sqlite.backup(self._writer, dest)
        except sqlite.BackupError as exc:
            raise LedgerError(str(exc)) from None
