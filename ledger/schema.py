"""The ledger's schema as numbered migrations, one list for SQLite and PostgreSQL alike: the
database records which have run (gpuacct.store).

Version 1 is the schema ledgers had before versions were recorded (their user_version is 0;
every statement is IF NOT EXISTS, so it changes nothing on such a file). A change to the schema
is a new migration appended here, never an edit of one that shipped (their SQL was rewritten
once into words both engines run, with the same effect on a SQLite file).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from gpuacct import store
from gpuacct.periods import month_start, week_start

V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    "user" TEXT PRIMARY KEY,
    balance {money} NOT NULL,
    charged {money} NOT NULL DEFAULT '0',  -- every charge ever, for the burn-rate metric
    opened_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id {id},
    "user" TEXT NOT NULL REFERENCES accounts("user"),
    kind TEXT NOT NULL CHECK (kind IN ('opening', 'charge', 'recharge', 'adjustment', 'refund')),
    amount {money} NOT NULL,
    balance_after {money} NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    window_end BIGINT,
    idempotency_key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS transactions_user_at ON transactions ("user", at);
CREATE TABLE IF NOT EXISTS usage_lines (
    window_end BIGINT NOT NULL,
    "user" TEXT NOT NULL,
    job TEXT NOT NULL,
    node TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpu_seconds {money} NOT NULL,
    cpu_core_seconds {money} NOT NULL,
    cost {money} NOT NULL,
    price_effective DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (window_end, "user", job, node, gpu_model)
);
CREATE INDEX IF NOT EXISTS usage_lines_user ON usage_lines ("user", window_end);
CREATE TABLE IF NOT EXISTS cursors (
    series TEXT PRIMARY KEY,
    value {money} NOT NULL,
    window_end BIGINT NOT NULL
){without_rowid};
CREATE TABLE IF NOT EXISTS windows (
    window_end {id},
    window_start BIGINT NOT NULL,  -- the previous window's end: usage since then is in it
    billed_at DOUBLE PRECISION NOT NULL,
    lines BIGINT NOT NULL,
    cost {money} NOT NULL
);
-- Windows whose usage lines InfluxDB has not yet acknowledged; the points are made from them.
CREATE TABLE IF NOT EXISTS influx_outbox (
    window_end {id} REFERENCES windows(window_end)
);
CREATE TABLE IF NOT EXISTS price_versions (  -- added from the web page; the config has the rest
    effective DOUBLE PRECISION PRIMARY KEY,
    version TEXT NOT NULL,  -- a PriceVersion as JSON, money as exact decimal text
    created_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS lease (
    id {id} CHECK (id = 1),
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
"""


def carry_over_point_outbox(db: store.Database) -> None:
    """Older ledgers kept each InfluxDB point's text in `outbox`; the windows those points
    belong to (a line's last field is its window's end) go to `influx_outbox`, whose points
    are made from the usage lines: nothing waiting is lost."""
    if not db.has_table("outbox"):
        return
    ends = {int(line.rsplit(" ", 1)[1]) for (line,) in db.execute("SELECT line FROM outbox")}
    db.executemany("INSERT INTO influx_outbox (window_end) VALUES ($1) ON CONFLICT DO NOTHING",
                   [(end,) for end in sorted(ends)])
    db.execute("DROP TABLE outbox")


# Of each line's GPU seconds, those idle-held (exporter.idle), and what they cost; and each
# user's sums per week (Monday 00:00 UTC, by window end), kept as windows commit: the waste
# report reads a row per user and week rather than a week of lines.
V3_COLUMNS = ("gpu_idle_seconds", "idle_cost")
V3 = """
CREATE TABLE IF NOT EXISTS weekly_usage (
    week_start BIGINT NOT NULL,
    "user" TEXT NOT NULL,
    gpu_seconds {money} NOT NULL,
    gpu_idle_seconds {money} NOT NULL,
    cost {money} NOT NULL,
    idle_cost {money} NOT NULL,
    PRIMARY KEY (week_start, "user")
){without_rowid};
"""

WeekRow = tuple[int, str, Decimal, Decimal, Decimal, Decimal]  # week, user, the four sums
ADD_TO_WEEK = (
    'INSERT INTO weekly_usage (week_start, "user", gpu_seconds, gpu_idle_seconds, cost, '
    'idle_cost) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (week_start, "user") DO UPDATE SET '
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


def write_weeks(db: store.Database, sums: dict[tuple[int, str], list[Decimal]]) -> None:
    db.executemany(ADD_TO_WEEK, [(week, user, *map(str, row))
                                 for (week, user), row in sums.items()])


def sum_weeks(db: store.Database) -> None:
    """The weekly sums of every line there is, into an empty weekly_usage: lines billed before
    version 3 get theirs too."""
    write_weeks(db, week_sums(
        (week_start(end), user, *map(Decimal, numbers)) for end, user, *numbers in db.execute(
            'SELECT window_end, "user", gpu_seconds, gpu_idle_seconds, cost, idle_cost '
            "FROM usage_lines")))


def idle_and_weeks(db: store.Database) -> None:
    """Idempotent, like the rest: a file that has had it is left as it is."""
    have = db.columns("usage_lines")
    money = db.ddl_words["money"]
    for column in V3_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE usage_lines ADD COLUMN {column} {money} NOT NULL DEFAULT '0'")
    if not db.has_table("weekly_usage"):
        store.statements(V3)(db)
        sum_weeks(db)


# Accounts apart from users: an account (a person's own, a group's, or "unassigned") has the
# balance; a user is charged to the account their membership in force at a window's start names
# (their own, named after them, when they have none). Each usage line keeps the account it was
# charged to, each transaction its actor; the audit lists every other change with its actor;
# each member's sums per account and month are kept as windows commit (statements, monthly
# limits). A ledger from before is every user their own account: nothing moves.
V4_COLUMNS = """
ALTER TABLE accounts RENAME COLUMN "user" TO name;
ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'personal'
    CHECK (kind IN ('personal', 'group', 'unassigned'));
ALTER TABLE accounts ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'frozen', 'closed'));
UPDATE accounts SET owner = name;
ALTER TABLE transactions RENAME COLUMN "user" TO account;
ALTER TABLE transactions ADD COLUMN actor TEXT NOT NULL DEFAULT '';
UPDATE transactions SET actor = CASE WHEN kind IN ('opening', 'charge') THEN 'gpuacct-billing'
    ELSE '(before the audit)' END;
ALTER TABLE usage_lines ADD COLUMN account TEXT NOT NULL DEFAULT '';
UPDATE usage_lines SET account = "user";
"""
V4_TABLES = """
CREATE INDEX IF NOT EXISTS usage_lines_account ON usage_lines (account, window_end);
CREATE TABLE IF NOT EXISTS memberships (
    "user" TEXT NOT NULL,
    effective DOUBLE PRECISION NOT NULL,  -- from then on (a window by its start), to the next row
    account TEXT NOT NULL,  -- '' for none: their own account, or unknown_users decides
    actor TEXT NOT NULL,
    PRIMARY KEY ("user", effective)
){without_rowid};
CREATE TABLE IF NOT EXISTS member_limits (  -- the most a member may spend per calendar month
    account TEXT NOT NULL REFERENCES accounts(name),
    "user" TEXT NOT NULL,
    monthly {money} NOT NULL,
    PRIMARY KEY (account, "user")
){without_rowid};
CREATE TABLE IF NOT EXISTS monthly_usage (
    month_start BIGINT NOT NULL,
    account TEXT NOT NULL,
    "user" TEXT NOT NULL,
    cost {money} NOT NULL,
    PRIMARY KEY (month_start, account, "user")
){without_rowid};
CREATE TABLE IF NOT EXISTS audit (
    id {id},
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def sum_months(db: store.Database) -> None:
    """Each member's cost per account and month, summed exactly from every line there is."""
    sums: dict[tuple[int, str, str], Decimal] = {}
    for end, account, user, cost in db.execute(
            'SELECT window_end, account, "user", cost FROM usage_lines'):
        key = (month_start(end), account, user)
        sums[key] = sums.get(key, Decimal(0)) + Decimal(cost)
    write_months(db, sums)


def write_months(db: store.Database, sums: dict[tuple[int, str, str], Decimal]) -> None:
    db.executemany('INSERT INTO monthly_usage (month_start, account, "user", cost) '
                   'VALUES ($1, $2, $3, $4) ON CONFLICT (month_start, account, "user") '
                   "DO UPDATE SET cost = excluded.cost",
                   [(*key, str(cost)) for key, cost in sums.items()])


def accounts_apart_from_users(db: store.Database) -> None:
    """Idempotent, like the rest: a file that has had it is left as it is."""
    if "user" in db.columns("accounts"):
        store.statements(V4_COLUMNS)(db)
    if not db.has_table("monthly_usage"):
        store.statements(V4_TABLES)(db)
        sum_months(db)


def births_and_roll_ups(db: store.Database) -> None:
    """Each cursor keeps when its counter began (its `_created`; NULL until read, 0 where the
    counter has none): a value below the cursor is a reset only if the counter began again,
    not because it was read from a Prometheus replica behind the one the cursor came from.
    A usage line rolled up from a day's lines says from when it covers (NULL: its window)."""
    if "created" not in db.columns("cursors"):
        db.execute("ALTER TABLE cursors ADD COLUMN created DOUBLE PRECISION")
    if "covers_from" not in db.columns("usage_lines"):
        db.execute("ALTER TABLE usage_lines ADD COLUMN covers_from BIGINT")


MIGRATIONS: list[store.Migration] = [store.statements(V1), carry_over_point_outbox,
                                      idle_and_weeks, accounts_apart_from_users,
                                      births_and_roll_ups]
VERSION = len(MIGRATIONS)
