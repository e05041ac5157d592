"""The ledger's schema as numbered migrations: `PRAGMA user_version` says which have run.

Version 1 is the schema ledgers had before versions were recorded (their user_version is 0;
every statement is IF NOT EXISTS, so it changes nothing on such a file). A change to the schema
is a new migration appended here, never an edit of one that shipped.
"""

from __future__ import annotations

import sqlite3

from gpuacct import sqlite

V1 = """
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


def carry_over_point_outbox(db: sqlite3.Connection) -> None:
    """Older ledgers kept each InfluxDB point's text in `outbox`; the windows those points
    belong to (a line's last field is its window's end) go to `influx_outbox`, whose points
    are made from the usage lines: nothing waiting is lost."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
                      ).fetchone():
        return
    ends = {int(line.rsplit(" ", 1)[1]) for (line,) in db.execute("SELECT line FROM outbox")}
    db.executemany("INSERT OR IGNORE INTO influx_outbox (window_end) VALUES (?)",
                   [(end,) for end in sorted(ends)])
    db.execute("DROP TABLE outbox")


MIGRATIONS: list[sqlite.Migration] = [sqlite.statements(V1), carry_over_point_outbox]
VERSION = len(MIGRATIONS)
