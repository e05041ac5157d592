"""The one way gpuacct's stores open their database, SQLite or PostgreSQL: numbered migrations,
a transaction that always ends, committed or rolled back, and one family of errors
(`StoreError`) whichever engine is behind (gpuacct.store.database says how the SQL is written).

A store hands out typed results, never a connection; only its own module runs SQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gpuacct.store.database import Database
from gpuacct.store.errors import (
    BackupError,
    IntegrityError,
    ReadOnlyError,
    SchemaError,
    StoreError,
)
from gpuacct.store.postgres import PostgresDatabase, is_url, redacted
from gpuacct.store.sqlite import SqliteDatabase

__all__ = [
    "LEASE_TABLE", "BackupError", "Database", "IntegrityError", "Migration", "PerThread",
    "ReadOnlyError", "SchemaError", "StoreError", "Target", "backup", "beside", "connect",
    "drop_lease", "exists", "is_url", "lease_holder", "migrate", "placeholders",
    "read_transaction", "redacted", "require_version", "statements", "take_lease",
    "transaction",
]

Target = Path | str  # a file, or a postgresql:// URL

# A migration takes the database inside its transaction. Its number is its place in the list
# plus one; the database records the last one applied (gpuacct.store.database).
Migration = Callable[[Database], None]


def beside(target: Target, name: str) -> Target:
    """Another store's place next to this one: a file of that name in the same folder, or,
    in PostgreSQL, the same database (each store has a schema of its own there)."""
    return target if is_url(target) else Path(target).with_name(name)


def exists(target: Target) -> bool:
    """Whether the store is there (a PostgreSQL one is made on first connect)."""
    return is_url(target) or Path(target).exists()


def connect(target: Target, readonly: bool = False, timeout: float = 30.0,
            schema: str = "public") -> Database:
    """Autocommit mode (`transaction()` opens the transactions). A read-only connection refuses
    every write with `ReadOnlyError`. `schema`: the store's schema in PostgreSQL (a SQLite file
    is one store already)."""
    if is_url(target):
        return PostgresDatabase(str(target), readonly, timeout, schema)
    return SqliteDatabase(Path(target), readonly, timeout)


@contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One writer at a time; COMMIT, or ROLLBACK on any exception: the connection never stays
    inside a transaction after the block."""
    db.begin_write()
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    db.commit()


@contextmanager
def read_transaction(db: Database) -> Iterator[None]:
    """Several reads that see one state of the database; inside a transaction already, that
    one."""
    if db.in_transaction:
        yield
        return
    db.begin_read()
    try:
        yield
    finally:
        db.commit()


def _split(script: str) -> list[str]:
    """A DDL script's statements: each ends with `;` at the end of a line (comments aside)."""
    parts, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if line.split("--", 1)[0].rstrip().endswith(";"):
            parts.append(pending.strip())
            pending = ""
    if pending.split("--", 1)[0].strip():
        raise ValueError(f"an incomplete SQL statement: {pending.strip()[:60]}")
    return parts


def statements(script: str) -> Migration:
    """A migration that runs each statement of a DDL script inside the migration's transaction,
    its slots ({id}, {id_never_reused}, {money}, {without_rowid}) in the engine's words."""
    parts = _split(script)

    def run(db: Database) -> None:
        for statement in parts:
            db.execute(statement.format_map(db.ddl_words))
    return run


def placeholders(count: int, first: int = 1) -> str:
    """`$1, $2, $3` for an `IN (...)` of `count` values, numbered from `first`."""
    return ", ".join(f"${n}" for n in range(first, first + count))


def migrate(db: Database, migrations: Sequence[Migration], what: str) -> int:
    """Apply the migrations the database has not had, each in its own transaction with its
    version number; returns the version now. A database from newer code is refused."""
    latest = len(migrations)
    version = db.schema_version()
    if version > latest:
        raise SchemaError(f"the {what} is of schema version {version}, newer than this "
                          f"gpuacct knows ({latest}): upgrade gpuacct")
    while version < latest:
        with transaction(db):
            if db.schema_version() != version:  # another process migrated meanwhile
                version = db.schema_version()
                continue
            migrations[version](db)
            version += 1
            db.set_schema_version(version)
    return version


def require_version(db: Database, latest: int, what: str) -> None:
    """For readers, which never migrate: the database must be exactly of this schema."""
    version = db.schema_version()
    if version != latest:
        action = "upgrade gpuacct" if version > latest else "start gpuacct-billing once to "\
            "migrate it"
        raise SchemaError(f"the {what} is of schema version {version}, this gpuacct reads "
                          f"version {latest}: {action}")


# One holder at a time: a store's `lease` table (the billing engine's, the enforcer's), for an
# active instance and its standby; taken inside the caller's writing transaction.
LEASE_TABLE = """CREATE TABLE IF NOT EXISTS lease (
    id {id} CHECK (id = 1),
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);"""


def take_lease(db: Database, holder: str, seconds: float, now: float) -> bool:
    """Take or renew the lease for `seconds` from `now`; False while another holds it."""
    row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
    if row is not None and row[0] != holder and row[1] > now:
        return False
    db.execute("INSERT INTO lease (id, holder, expires) VALUES (1, $1, $2) "
               "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
               "expires = excluded.expires", (holder, now + seconds))
    return True


def lease_holder(db: Database, now: float) -> str | None:
    row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
    return row[0] if row is not None and row[1] > now else None


def drop_lease(db: Database, holder: str) -> None:
    db.execute("DELETE FROM lease WHERE id = 1 AND holder = $1", (holder,))


def backup(db: Database, dest: Path) -> None:
    """A consistent copy of a SQLite store while others keep writing; `dest` is either complete
    or absent. A PostgreSQL store is backed up by its server."""
    if not isinstance(db, SqliteDatabase):
        raise BackupError("the ledger is in PostgreSQL: back it up with pg_dump (or the "
                          "server's own backups)")
    db.backup(dest)


class PerThread:
    """One connection per thread (a web server's worker threads read concurrently). Kept in
    thread-local storage only: a thread's connection is closed when the thread ends, so a
    server that runs each request in a new thread holds none for long."""

    def __init__(self, opener: Callable[[], Database]) -> None:
        self._open = opener
        self._local = threading.local()

    def get(self) -> Database:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = self._open()
            self._local.db = db
        return db

    def close(self) -> None:
        """This thread's connection; the others close as their threads end."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
