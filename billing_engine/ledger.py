"""The ledger: SQLite in WAL mode, money as exact decimal text, every change in one transaction.

Balances change only together with a transaction row (opening, charge, recharge, adjustment,
refund) carrying a unique idempotency key, so `balance = sum of its account's transactions`
holds after any crash. A window is billed in one SQLite transaction: its usage lines, charges,
cursors, its outbox row and its `windows` row commit together or not at all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from gpuacct.config import PriceVersion

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    user TEXT PRIMARY KEY,
    balance TEXT NOT NULL,
    charged TEXT NOT NULL DEFAULT '0',  -- every charge ever, for the burn-rate metric
    opened_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL REFERENCES accounts(user),
    kind TEXT NOT NULL CHECK (kind IN ('opening', 'charge', 'recharge', 'adjustment', 'refund')),
    amount TEXT NOT NULL,
    balance_after TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    window_end INTEGER,
    idempotency_key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS transactions_user_at ON transactions (user, at);
CREATE TABLE IF NOT EXISTS usage_lines (
    window_end INTEGER NOT NULL,
    user TEXT NOT NULL,
    job TEXT NOT NULL,
    node TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpu_seconds TEXT NOT NULL,
    cpu_core_seconds TEXT NOT NULL,
    cost TEXT NOT NULL,
    price_effective REAL NOT NULL,
    PRIMARY KEY (window_end, user, job, node, gpu_model)
);
CREATE INDEX IF NOT EXISTS usage_lines_user ON usage_lines (user, window_end);
CREATE TABLE IF NOT EXISTS cursors (
    series TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    window_end INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    window_end INTEGER PRIMARY KEY,
    window_start INTEGER NOT NULL,  -- the previous window's end: usage since then is in it
    billed_at REAL NOT NULL,
    lines INTEGER NOT NULL,
    cost TEXT NOT NULL
);
-- Windows whose usage lines InfluxDB has not yet acknowledged; the points are made from them.
CREATE TABLE IF NOT EXISTS influx_outbox (
    window_end INTEGER PRIMARY KEY REFERENCES windows(window_end)
);
CREATE TABLE IF NOT EXISTS price_versions (  -- added from the web page; the config has the rest
    effective REAL PRIMARY KEY,
    version TEXT NOT NULL,  -- a PriceVersion as JSON, money as exact decimal text
    created_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


class LedgerError(Exception):
    """A change the ledger refuses (unknown user, a key already used); nothing was written."""


class UsageLine(NamedTuple):  # a tuple: a window makes thousands
    user: str
    job: str
    node: str
    gpu_model: str
    gpu_seconds: Decimal
    cpu_core_seconds: Decimal
    cost: Decimal


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._migrate_outbox()

    def _migrate_outbox(self) -> None:
        """Ledgers from before 2026-11-22 kept each point's text in `outbox`; the windows those
        points belong to (the line's last field is the window's end) go to `influx_outbox`,
        whose points are made from the usage lines: nothing waiting is lost."""
        old = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        if not self.db.execute(old).fetchone():
            return
        with self.transaction() as db:
            if not db.execute(old).fetchone():
                return  # another process moved it meanwhile
            ends = {int(line.rsplit(" ", 1)[1])
                    for (line,) in db.execute("SELECT line FROM outbox")}
            db.executemany("INSERT OR IGNORE INTO influx_outbox (window_end) VALUES (?)",
                           [(end,) for end in sorted(ends)])
            db.execute("DROP TABLE outbox")

    def close(self) -> None:
        self.db.close()

    def backup(self, dest: Path) -> None:
        """A consistent copy while the engine keeps billing (SQLite's online backup), checked
        whole before it is renamed into place: `dest` is either complete or absent."""
        if dest.exists():
            raise LedgerError(f"{dest} exists; choose a new file")
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            copy = sqlite3.connect(partial)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write {dest}: {exc}") from None
        try:
            self.db.backup(copy)
            (result,) = copy.execute("PRAGMA integrity_check").fetchone()
            if result != "ok":
                raise LedgerError(f"the copy failed SQLite's integrity check: {result}")
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        except BaseException:
            copy.close()
            partial.unlink(missing_ok=True)
            raise
        copy.close()
        partial.rename(dest)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: one writer at a time, and everything or nothing."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- meta
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # -- the billing lease: one engine bills at a time
    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute("INSERT INTO lease (id, holder, expires) VALUES (1, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
                       "expires = excluded.expires", (holder, now + seconds))
            return True

    def holds_lease(self, db: sqlite3.Connection, holder: str) -> bool:
        row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
        return row is not None and row[0] == holder and row[1] > time.time()

    def release_lease(self, holder: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM lease WHERE id = 1 AND holder = ?", (holder,))

    # -- windows and cursors
    def last_window(self) -> int | None:
        row = self.db.execute("SELECT MAX(window_end) FROM windows").fetchone()
        return None if row[0] is None else int(row[0])

    def cursors(self) -> dict[str, Decimal]:
        return {series: Decimal(value)
                for series, value in self.db.execute("SELECT series, value FROM cursors")}

    def move_cursors(self, db: sqlite3.Connection, values: dict[str, Decimal], end: int) -> None:
        """Each series' cursor to its value at the window's end `end`."""
        db.executemany("INSERT INTO cursors (series, value, window_end) VALUES (?, ?, ?) "
                       "ON CONFLICT (series) DO UPDATE SET value = excluded.value, "
                       "window_end = excluded.window_end",
                       [(key, str(value), end) for key, value in values.items()])

    # -- usage lines
    def add_usage_lines(self, db: sqlite3.Connection, end: int, lines: list[UsageLine],
                        price_effective: float) -> None:
        db.executemany(
            "INSERT INTO usage_lines (window_end, user, job, node, gpu_model, gpu_seconds, "
            "cpu_core_seconds, cost, price_effective) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(end, ln.user, ln.job, ln.node, ln.gpu_model, str(ln.gpu_seconds),
              str(ln.cpu_core_seconds), str(ln.cost), price_effective) for ln in lines])

    def window_lines(self, end: int) -> list[UsageLine]:
        return [UsageLine(user, job, node, model, Decimal(gpu), Decimal(cpu), Decimal(cost))
                for user, job, node, model, gpu, cpu, cost in self.db.execute(
                    "SELECT user, job, node, gpu_model, gpu_seconds, cpu_core_seconds, cost "
                    "FROM usage_lines WHERE window_end = ?", (end,))]

    # -- accounts and transactions
    def balance(self, user: str) -> Decimal | None:
        row = self.db.execute("SELECT balance FROM accounts WHERE user = ?", (user,)).fetchone()
        return None if row is None else Decimal(row[0])

    def balances(self) -> dict[str, Decimal]:
        return {user: Decimal(b)
                for user, b in self.db.execute("SELECT user, balance FROM accounts ORDER BY user")}

    def open_account(self, db: sqlite3.Connection, user: str, opening: Decimal,
                     at: float) -> None:
        db.execute("INSERT INTO accounts (user, balance, opened_at) VALUES (?, ?, ?)",
                   (user, str(opening), at))
        db.execute("INSERT INTO transactions (user, kind, amount, balance_after, at, reason, "
                   "idempotency_key) VALUES (?, 'opening', ?, ?, ?, 'opening balance', ?)",
                   (user, str(opening), str(opening), at, f"opening:{user}"))

    def post(self, db: sqlite3.Connection, user: str, kind: str, amount: Decimal, at: float,
             key: str, reason: str = "", window_end: int | None = None) -> Decimal:
        """Add `amount` (negative for a charge) to the balance, with its transaction row."""
        row = db.execute("SELECT balance FROM accounts WHERE user = ?", (user,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown user {user!r}: no account in the ledger")
        if db.execute("SELECT 1 FROM transactions WHERE idempotency_key = ?", (key,)).fetchone():
            raise LedgerError(f"idempotency key {key!r} was already used")
        balance = Decimal(row[0]) + amount
        db.execute("UPDATE accounts SET balance = ? WHERE user = ?", (str(balance), user))
        if kind == "charge":
            charged = Decimal(db.execute("SELECT charged FROM accounts WHERE user = ?",
                                         (user,)).fetchone()[0]) - amount
            db.execute("UPDATE accounts SET charged = ? WHERE user = ?", (str(charged), user))
        db.execute("INSERT INTO transactions (user, kind, amount, balance_after, at, reason, "
                   "window_end, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (user, kind, str(amount), str(balance), at, reason, window_end, key))
        return balance

    def charge_window(self, db: sqlite3.Connection, charges: dict[str, Decimal], at: float,
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

    def invariant_violations(self) -> list[str]:
        """Accounts whose balance is not the sum of their transactions (should be none)."""
        sums: dict[str, Decimal] = {}
        for user, amount in self.db.execute("SELECT user, amount FROM transactions"):
            sums[user] = sums.get(user, Decimal(0)) + Decimal(amount)
        return [f"{user}: balance {balance} but transactions sum to {sums.get(user)}"
                for user, balance in self.balances().items() if sums.get(user) != balance]

    # -- prices
    def price_versions(self) -> list[tuple[PriceVersion, float, str]]:
        """(version, created_at, reason) of every version added here, oldest first."""
        return [(PriceVersion.model_validate_json(text), created, reason)
                for text, created, reason in self.db.execute(
                    "SELECT version, created_at, reason FROM price_versions ORDER BY effective")]

    def add_price_version(self, db: sqlite3.Connection, version: PriceVersion, now: float,
                          reason: str) -> None:
        """Only from now on: a window already billed, or being billed, keeps its price."""
        effective = version.starts()
        last = db.execute("SELECT MAX(window_end) FROM windows").fetchone()[0]
        if effective < now or (last is not None and effective < last):
            raise LedgerError("prices cannot change the past: the effective time must be now "
                              "or later")
        if db.execute("SELECT 1 FROM price_versions WHERE effective = ?",
                      (effective,)).fetchone():
            raise LedgerError("a price version with this effective time exists already")
        db.execute("INSERT INTO price_versions (effective, version, created_at, reason) "
                   "VALUES (?, ?, ?, ?)", (effective, version.model_dump_json(), now, reason))

    # -- outbox: windows whose points InfluxDB has not acknowledged, oldest first
    def outbox_windows(self) -> list[int]:
        return [int(end) for (end,) in self.db.execute(
            "SELECT window_end FROM influx_outbox ORDER BY window_end")]

    def outbox_done(self, end: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM influx_outbox WHERE window_end = ?", (end,))

    def outbox_backlog(self) -> int:
        """Points waiting for InfluxDB."""
        return outbox_backlog(self.db)


def outbox_backlog(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(SUM(lines), 0) FROM influx_outbox "
                          "JOIN windows USING (window_end)").fetchone()[0])
