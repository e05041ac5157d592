"""The SQLite helper every store opens its database with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gpuacct import sqlite

MIGRATIONS = [sqlite.statements("CREATE TABLE t (x INTEGER); -- the first; a comment\n"),
              sqlite.statements("ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT '';")]


def test_migrations_run_once_in_order_and_record_the_version(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "a.sqlite")
    assert sqlite.migrate(db, MIGRATIONS[:1], "test db") == 1
    db.execute("INSERT INTO t (x) VALUES (1)")
    assert sqlite.migrate(db, MIGRATIONS, "test db") == 2
    assert sqlite.migrate(db, MIGRATIONS, "test db") == 2
    assert db.execute("SELECT x, y FROM t").fetchall() == [(1, "")]


def test_a_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "a.sqlite")
    db.execute("PRAGMA user_version = 3")
    with pytest.raises(sqlite.SchemaError, match="version 3, newer than this gpuacct knows"):
        sqlite.migrate(db, MIGRATIONS, "test db")
    with pytest.raises(sqlite.SchemaError, match="reads version 2: upgrade gpuacct"):
        sqlite.require_version(db, 2, "test db")


def test_a_failing_migration_leaves_the_version_where_it_was(tmp_path: Path) -> None:
    db = sqlite.connect(tmp_path / "a.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        sqlite.migrate(db, [*MIGRATIONS, sqlite.statements("INSERT INTO nowhere VALUES (1);")],
                       "test db")
    assert sqlite.schema_version(db) == 2
    assert not db.in_transaction


def test_a_read_only_connection_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    sqlite.migrate(sqlite.connect(path), MIGRATIONS, "test db")
    reader = sqlite.connect(path, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
        reader.execute("INSERT INTO t (x) VALUES (2)")
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


def test_an_incomplete_script_is_named() -> None:
    with pytest.raises(ValueError, match="incomplete SQL statement: CREATE TABLE u"):
        sqlite.statements("CREATE TABLE u (x INTEGER)")
