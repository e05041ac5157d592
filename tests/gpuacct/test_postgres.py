"""gpuacct.postgres against a real server: the stores' SQLite dialect runs as written, a
dropped connection is replaced between transactions and fails the one it broke, whole."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from gpuacct import sqlite


def drop(db: sqlite.Connection, url: str) -> None:
    """The server ends this connection, as a restart or a failover would."""
    (pid,) = db.execute("SELECT pg_backend_pid()").fetchone()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_the_sqlite_dialect_runs_and_a_lost_connection_fails_only_its_transaction(
        pg_database: str) -> None:
    db = sqlite.connect(pg_database, schema="t")
    with sqlite.transaction(db):
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, user TEXT NOT NULL UNIQUE, "
                   "at REAL NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO notes (user, at) VALUES (?, ?)", ("alice", 1.0))
        db.execute("INSERT OR IGNORE INTO notes (user, at) VALUES (?, ?)", ("alice", 2.5))
        db.executemany("INSERT INTO notes (user, at) VALUES (?, ?)", [("bob", 3.0), ("100%", 4.0)])
    assert db.execute("SELECT user, CAST(at AS INTEGER) FROM notes ORDER BY id").fetchall() == [
        ("alice", 1), ("bob", 3), ("100%", 4)]
    assert [r[1] for r in db.execute("PRAGMA table_info(notes)")] == ["id", "user", "at"]
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO notes (user, at) VALUES (?, ?)", ("bob", 5.0))

    drop(db, pg_database)  # between transactions: the next statement reconnects
    assert db.execute("SELECT COUNT(*) FROM notes").fetchone() == (3,)

    lost = pytest.raises(sqlite3.OperationalError, match=r"terminating connection|lost inside")
    with lost, sqlite.transaction(db):
        db.execute("INSERT INTO notes (user, at) VALUES (?, ?)", ("carol", 6.0))
        drop(db, pg_database)
        db.execute("INSERT INTO notes (user, at) VALUES (?, ?)", ("dave", 7.0))
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM notes").fetchone() == (3,)  # neither carol nor dave

    reader = sqlite.connect(pg_database, readonly=True, schema="t")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM notes")
    assert sqlite.schema_version(reader) == 0
