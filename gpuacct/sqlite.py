"""The one way gpuacct's stores open SQLite: WAL, durable commits, numbered migrations, and a
transaction that always ends, committed or rolled back.

A store hands out typed results, never a connection; only its own module runs SQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# A migration takes the connection inside its transaction. Its number is its place in the
# list plus one; `PRAGMA user_version` records the last one applied.
Migration = Callable[[sqlite3.Connection], None]


class SchemaError(Exception):
    """The database is of a schema this code cannot use (newer, or not yet migrated)."""


def connect(path: Path, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
    """Autocommit mode (`transaction()` opens the transactions), WAL, full fsync at commit.
    A read-only connection refuses every write with `sqlite3.OperationalError`."""
    if readonly:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=timeout,
                             isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=ON")
        return db
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
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
def read_transaction(db: sqlite3.Connection) -> Iterator[None]:
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

    def run(db: sqlite3.Connection) -> None:
        for statement in parts:
            db.execute(statement)
    return run


def placeholders(count: int) -> str:
    """`?, ?, ?` for an `IN (...)` of `count` values."""
    return ", ".join("?" * count)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration], what: str) -> int:
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


def require_version(db: sqlite3.Connection, latest: int, what: str) -> None:
    """For readers, which never migrate: the database must be exactly of this schema."""
    version = schema_version(db)
    if version != latest:
        action = "upgrade gpuacct" if version > latest else "start gpuacct-billing once to "\
            "migrate it"
        raise SchemaError(f"the {what} is of schema version {version}, this gpuacct reads "
                          f"version {latest}: {action}")


class BackupError(Exception):
    """The copy could not be made; nothing was left behind."""


def backup(db: sqlite3.Connection, dest: Path) -> None:
    """A consistent copy of `db` while others keep writing (SQLite's online backup), checked
    whole before it is renamed into place: `dest` is either complete or absent."""
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

    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        self._open = opener
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
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
