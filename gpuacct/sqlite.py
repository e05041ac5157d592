"""The one way gpuacct's stores open SQLite: WAL, durable commits, numbered migrations, and a
transaction that always ends, committed or rolled back. A `postgresql://` URL in place of a
file opens PostgreSQL behind the same calls (gpuacct.postgres).

A store hands out typed results, never a connection; only its own module runs SQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from gpuacct import files, postgres


class Connection(Protocol):
    """What the stores use of a connection: sqlite3's, or gpuacct.postgres'."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def close(self) -> None: ...


Target = Path | str  # a file, or a postgresql:// URL

# A migration takes the connection inside its transaction. Its number is its place in the
# list plus one; `PRAGMA user_version` records the last one applied.
Migration = Callable[[Connection], None]


def is_postgres(db: Connection) -> bool:
    return isinstance(db, postgres.Connection)


class SchemaError(Exception):
    """The database is of a schema this code cannot use (newer, or not yet migrated)."""


def beside(target: Target, name: str) -> Target:
    """Another store's place next to this one: a file of that name in the same folder, or,
    in PostgreSQL, the same database (each store has a schema of its own there)."""
    return target if postgres.is_url(target) else Path(target).with_name(name)


def exists(target: Target) -> bool:
    """Whether the store is there (a PostgreSQL one is made on first connect)."""
    return postgres.is_url(target) or Path(target).exists()


def connect(path: Target, readonly: bool = False, timeout: float = 30.0,
            schema: str = "public") -> Connection:
    """Autocommit mode (`transaction()` opens the transactions), WAL, full fsync at commit.
    A read-only connection refuses every write with `sqlite3.OperationalError`. `schema`:
    the store's schema in PostgreSQL (a SQLite file is one store already)."""
    if postgres.is_url(path):
        return postgres.Connection(str(path), readonly, timeout, schema)
    path = Path(path)
    if readonly:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=timeout,
                             isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=ON")
        return db
    # A store holds who used what and paid what: made private, and refused if anyone may
    # read it (SQLite makes its -wal and -shm files with the same mode).
    files.create_private(path)
    problem = files.readable_by_others(path)
    if problem:
        raise SchemaError(problem)
    db = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: Connection) -> Iterator[Connection]:
    """BEGIN IMMEDIATE (one writer at a time), COMMIT, or ROLLBACK on any exception: the
    connection never stays inside a transaction after the block."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def read_transaction(db: Connection) -> Iterator[None]:
    """Several reads that see one state of the database (a deferred transaction); inside a
    transaction already, that one."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def statements(script: str) -> Migration:
    """A migration that runs each statement of an SQL script inside the migration's transaction
    (`executescript` would commit first)."""
    parts, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            parts.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"an incomplete SQL statement: {pending.strip()[:60]}")

    def run(db: Connection) -> None:
        for statement in parts:
            db.execute(statement)
    return run


def placeholders(count: int) -> str:
    """`?, ?, ?` for an `IN (...)` of `count` values."""
    return ", ".join("?" * count)


def schema_version(db: Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: Connection, migrations: Sequence[Migration], what: str) -> int:
    """Apply the migrations the database has not had, each in its own transaction with its
    version number; returns the version now. A database from newer code is refused."""
    latest = len(migrations)
    version = schema_version(db)
    if version > latest:
        raise SchemaError(f"the {what} is of schema version {version}, newer than this "
                          f"gpuacct knows ({latest}): upgrade gpuacct")
    while version < latest:
        with transaction(db):
            if schema_version(db) != version:  # another process migrated meanwhile
                version = schema_version(db)
                continue
            migrations[version](db)
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
    return version


def require_version(db: Connection, latest: int, what: str) -> None:
    """For readers, which never migrate: the database must be exactly of this schema."""
    version = schema_version(db)
    if version != latest:
        action = "upgrade gpuacct" if version > latest else "start gpuacct-billing once to "\
            "migrate it"
        raise SchemaError(f"the {what} is of schema version {version}, this gpuacct reads "
                          f"version {latest}: {action}")


# One holder at a time: a store's `lease` table (the billing engine's, the enforcer's), for an
# active instance and its standby; taken inside the caller's writing transaction.
LEASE_TABLE = """CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);"""


def take_lease(db: Connection, holder: str, seconds: float, now: float) -> bool:
    """Take or renew the lease for `seconds` from `now`; False while another holds it."""
    row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
    if row is not None and row[0] != holder and row[1] > now:
        return False
    db.execute("INSERT INTO lease (id, holder, expires) VALUES (1, ?, ?) "
               "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
               "expires = excluded.expires", (holder, now + seconds))
    return True


def lease_holder(db: Connection, now: float) -> str | None:
    row = db.execute("SELECT holder, expires FROM lease WHERE id = 1").fetchone()
    return row[0] if row is not None and row[1] > now else None


def drop_lease(db: Connection, holder: str) -> None:
    db.execute("DELETE FROM lease WHERE id = 1 AND holder = ?", (holder,))


class BackupError(Exception):
    """The copy could not be made; nothing was left behind."""


def backup(db: Connection, dest: Path) -> None:
    """A consistent copy of `db` while others keep writing (SQLite's online backup), checked
    whole before it is renamed into place: `dest` is either complete or absent."""
    if not isinstance(db, sqlite3.Connection):
        raise BackupError("the ledger is in PostgreSQL: back it up with pg_dump (or the "
                          "server's own backups)")
    if dest.exists():
        raise BackupError(f"{dest} exists; choose a new file")
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        copy = sqlite3.connect(partial)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot write {dest}: {exc}") from None
    try:
        db.backup(copy)
        (result,) = copy.execute("PRAGMA integrity_check").fetchone()
        if result != "ok":
            raise BackupError(f"the copy failed SQLite's integrity check: {result}")
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except BaseException:
        copy.close()
        partial.unlink(missing_ok=True)
        raise
    copy.close()
    partial.rename(dest)


class PerThread:
    """One connection per thread (a web server's worker threads read concurrently). Kept in
    thread-local storage only: a thread's connection is closed when the thread ends, so a
    server that runs each request in a new thread holds none for long."""

    def __init__(self, opener: Callable[[], Connection]) -> None:
        self._open = opener
        self._local = threading.local()

    def get(self) -> Connection:
        db: Connection | None = getattr(self._local, "db", None)
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
