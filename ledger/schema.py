"""The ledger's schema as numbered migrations: `PRAGMA user_version` says which have run.

Version 1 is the schema ledgers had before versions were recorded (their user_version is 0;
every statement is IF NOT EXISTS, so it changes nothing on such a file). A change to the schema
is a new migration appended here, never an edit of one that shipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from gpuacct import sqlite
from gpuacct.periods import month_start, week_start

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


def carry_over_point_outbox(db: sqlite.Connection) -> None:
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


# Of each line's GPU seconds, those idle-held (exporter.idle), and what they cost; and each
# user's sums per week (Monday 00:00 UTC, by window end), kept as windows commit: the waste
# report reads a row per user and week rather than a week of lines.
V3_COLUMNS = ("gpu_idle_seconds", "idle_cost")
V3 = """
CREATE TABLE IF NOT EXISTS weekly_usage (
    week_start INTEGER NOT NULL,
    user TEXT NOT NULL,
    gpu_seconds TEXT NOT NULL,
    gpu_idle_seconds TEXT NOT NULL,
    cost TEXT NOT NULL,
    idle_cost TEXT NOT NULL,
    PRIMARY KEY (week_start, user)
) WITHOUT ROWID;
"""

WeekRow = tuple[int, str, Decimal, Decimal, Decimal, Decimal]  # week, user, the four sums
ADD_TO_WEEK = (
    "INSERT INTO weekly_usage (week_start, user, gpu_seconds, gpu_idle_seconds, cost, "
    "idle_cost) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (week_start, user) DO UPDATE SET "
    "gpu_seconds = excluded.gpu_seconds, gpu_idle_seconds = excluded.gpu_idle_seconds, "
    "cost = excluded.cost, idle_cost = excluded.idle_cost")


def week_sums(rows: Iterable[WeekRow],
              into: dict[tuple[int, str], list[Decimal]] | None = None
              ) -> dict[tuple[int, str], list[Decimal]]:
    """(week, user) -> GPU seconds, idle seconds, cost, idle cost, summed exactly."""
    sums = {} if into is None else into
    for week, user, *numbers in rows:
        row = sums.setdefault((week, user), [Decimal(0)] * 4)
        for i, value in enumerate(numbers):
            row[i] += value
    return sums


def write_weeks(db: sqlite.Connection, sums: dict[tuple[int, str], list[Decimal]]) -> None:
    db.executemany(ADD_TO_WEEK, [(week, user, *map(str, row))
                                 for (week, user), row in sums.items()])


def sum_weeks(db: sqlite.Connection) -> None:
    """The weekly sums of every line there is, into an empty weekly_usage: lines billed before
    version 3 get theirs too."""
    write_weeks(db, week_sums(
        (week_start(end), user, *map(Decimal, numbers)) for end, user, *numbers in db.execute(
            "SELECT window_end, user, gpu_seconds, gpu_idle_seconds, cost, idle_cost "
            "FROM usage_lines")))


def idle_and_weeks(db: sqlite.Connection) -> None:
    """Idempotent, like the rest: a file that has had it is left as it is."""
    have = {row[1] for row in db.execute("PRAGMA table_info(usage_lines)")}
    for column in V3_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE usage_lines ADD COLUMN {column} TEXT NOT NULL DEFAULT '0'")
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'weekly_usage'").fetchone():
        sqlite.statements(V3)(db)
        sum_weeks(db)


# Accounts apart from users: an account (a person's own, a group's, or "unassigned") has the
# balance; a user is charged to the account their membership in force at a window's start names
# (their own, named after them, when they have none). Each usage line keeps the account it was
# charged to, each transaction its actor; the audit lists every other change with its actor;
# each member's sums per account and month are kept as windows commit (statements, monthly
# limits). A ledger from before is every user their own account: nothing moves.
V4_COLUMNS = """
ALTER TABLE accounts RENAME COLUMN user TO name;
ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'personal'
    CHECK (kind IN ('personal', 'group', 'unassigned'));
ALTER TABLE accounts ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'frozen', 'closed'));
UPDATE accounts SET owner = name;
ALTER TABLE transactions RENAME COLUMN user TO account;
ALTER TABLE transactions ADD COLUMN actor TEXT NOT NULL DEFAULT '';
UPDATE transactions SET actor = CASE WHEN kind IN ('opening', 'charge') THEN 'gpuacct-billing'
    ELSE '(before the audit)' END;
ALTER TABLE usage_lines ADD COLUMN account TEXT NOT NULL DEFAULT '';
UPDATE usage_lines SET account = user;
"""
V4_TABLES = """
CREATE INDEX IF NOT EXISTS usage_lines_account ON usage_lines (account, window_end);
CREATE TABLE IF NOT EXISTS memberships (
    user TEXT NOT NULL,
    effective REAL NOT NULL,  -- from this time on (a window by its start), until the next row
    account TEXT NOT NULL,  -- '' for none: their own account, or unknown_users decides
    actor TEXT NOT NULL,
    PRIMARY KEY (user, effective)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_limits (  -- the most a member may spend per calendar month
    account TEXT NOT NULL REFERENCES accounts(name),
    user TEXT NOT NULL,
    monthly TEXT NOT NULL,
    PRIMARY KEY (account, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS monthly_usage (
    month_start INTEGER NOT NULL,
    account TEXT NOT NULL,
    user TEXT NOT NULL,
    cost TEXT NOT NULL,
    PRIMARY KEY (month_start, account, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def sum_months(db: sqlite.Connection) -> None:
    """Each member's cost per account and month, summed exactly from every line there is."""
    sums: dict[tuple[int, str, str], Decimal] = {}
    for end, account, user, cost in db.execute(
            "SELECT window_end, account, user, cost FROM usage_lines"):
        key = (month_start(end), account, user)
        sums[key] = sums.get(key, Decimal(0)) + Decimal(cost)
    write_months(db, sums)


def write_months(db: sqlite.Connection, sums: dict[tuple[int, str, str], Decimal]) -> None:
    db.executemany("INSERT INTO monthly_usage (month_start, account, user, cost) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT (month_start, account, user) "
                   "DO UPDATE SET cost = excluded.cost",
                   [(*key, str(cost)) for key, cost in sums.items()])


def accounts_apart_from_users(db: sqlite.Connection) -> None:
    """Idempotent, like the rest: a file that has had it is left as it is."""
    if "user" in {row[1] for row in db.execute("PRAGMA table_info(accounts)")}:
        sqlite.statements(V4_COLUMNS)(db)
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'monthly_usage'").fetchone():
        sqlite.statements(V4_TABLES)(db)
        sum_months(db)


def births_and_roll_ups(db: sqlite.Connection) -> None:
    """Each cursor keeps when its counter began (its `_created`; NULL until read, 0 where the
    counter has none): a value below the cursor is a reset only if the counter began again,
    not because it was read from a Prometheus replica behind the one the cursor came from.
    A usage line rolled up from a day's lines says from when it covers (NULL: its window)."""
    if "created" not in {row[1] for row in db.execute("PRAGMA table_info(cursors)")}:
        db.execute("ALTER TABLE cursors ADD COLUMN created REAL")
    if "covers_from" not in {row[1] for row in db.execute("PRAGMA table_info(usage_lines)")}:
        db.execute("ALTER TABLE usage_lines ADD COLUMN covers_from INTEGER")


MIGRATIONS: list[sqlite.Migration] = [sqlite.statements(V1), carry_over_point_outbox,
                                      idle_and_weeks, accounts_apart_from_users,
                                      births_and_roll_ups]
VERSION = len(MIGRATIONS)

# A ledger in PostgreSQL begins at the current version, money as NUMERIC (exact, unbounded).
# Its later changes are migrations appended to both lists.
POSTGRES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    balance NUMERIC NOT NULL,
    charged NUMERIC NOT NULL DEFAULT 0,
    opened_at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL DEFAULT 'personal' CHECK (kind IN ('personal', 'group', 'unassigned')),
    owner TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'frozen', 'closed'))
);
CREATE TABLE IF NOT EXISTS transactions (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(name),
    kind TEXT NOT NULL CHECK (kind IN ('opening', 'charge', 'recharge', 'adjustment', 'refund')),
    amount NUMERIC NOT NULL,
    balance_after NUMERIC NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    window_end BIGINT,
    idempotency_key TEXT NOT NULL UNIQUE,
    actor TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS transactions_user_at ON transactions (account, at);
CREATE TABLE IF NOT EXISTS usage_lines (
    window_end BIGINT NOT NULL,
    user TEXT NOT NULL,
    job TEXT NOT NULL,
    node TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpu_seconds NUMERIC NOT NULL,
    cpu_core_seconds NUMERIC NOT NULL,
    cost NUMERIC NOT NULL,
    price_effective DOUBLE PRECISION NOT NULL,
    gpu_idle_seconds NUMERIC NOT NULL DEFAULT 0,
    idle_cost NUMERIC NOT NULL DEFAULT 0,
    account TEXT NOT NULL DEFAULT '',
    covers_from BIGINT,
    PRIMARY KEY (window_end, user, job, node, gpu_model)
);
CREATE INDEX IF NOT EXISTS usage_lines_user ON usage_lines (user, window_end);
CREATE INDEX IF NOT EXISTS usage_lines_account ON usage_lines (account, window_end);
CREATE TABLE IF NOT EXISTS cursors (
    series TEXT PRIMARY KEY,
    value NUMERIC NOT NULL,
    window_end BIGINT NOT NULL,
    created DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS windows (
    window_end BIGINT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    billed_at DOUBLE PRECISION NOT NULL,
    lines BIGINT NOT NULL,
    cost NUMERIC NOT NULL
);
CREATE TABLE IF NOT EXISTS influx_outbox (
    window_end BIGINT PRIMARY KEY REFERENCES windows(window_end)
);
CREATE TABLE IF NOT EXISTS price_versions (
    effective DOUBLE PRECISION PRIMARY KEY,
    version TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS lease (
    id INT PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS weekly_usage (
    week_start BIGINT NOT NULL,
    user TEXT NOT NULL,
    gpu_seconds NUMERIC NOT NULL,
    gpu_idle_seconds NUMERIC NOT NULL,
    cost NUMERIC NOT NULL,
    idle_cost NUMERIC NOT NULL,
    PRIMARY KEY (week_start, user)
);
CREATE TABLE IF NOT EXISTS memberships (
    user TEXT NOT NULL,
    effective DOUBLE PRECISION NOT NULL,
    account TEXT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (user, effective)
);
CREATE TABLE IF NOT EXISTS member_limits (
    account TEXT NOT NULL REFERENCES accounts(name),
    user TEXT NOT NULL,
    monthly NUMERIC NOT NULL,
    PRIMARY KEY (account, user)
);
CREATE TABLE IF NOT EXISTS monthly_usage (
    month_start BIGINT NOT NULL,
    account TEXT NOT NULL,
    user TEXT NOT NULL,
    cost NUMERIC NOT NULL,
    PRIMARY KEY (month_start, account, user)
);
CREATE TABLE IF NOT EXISTS audit (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def _begun(db: sqlite.Connection) -> None:
    """Versions 2 to 5 on PostgreSQL: in its first version already."""


def migrations(db: sqlite.Connection) -> list[sqlite.Migration]:
    if sqlite.is_postgres(db):
        return [sqlite.statements(POSTGRES), *[_begun] * (VERSION - 1)]
    return MIGRATIONS
