"""gpuacct.store on both engines, a SQLite file and a real PostgreSQL server: the stores' SQL
runs as written on each, migrations run once and in order, errors come as one family, and
every store's migrated schema is the same table by table on both."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from allocator.store import AllocationStore
from enforcer.notices import Notices
from enforcer.store import Store
from gpuacct import store
from gpuacct.config import NotificationSettings
from gpuacct.store import Target
from jobstore.store import JobStore
from ledger import Ledger

MIGRATIONS = [store.statements("CREATE TABLE t (x BIGINT); -- the first; a comment\n"),
              store.statements("ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT '';")]


def test_migrations_run_once_in_order_and_record_the_version(store_target: Target) -> None:
    db = store.connect(store_target, schema="t")
    assert store.migrate(db, MIGRATIONS[:1], "test db") == 1
    db.execute("INSERT INTO t (x) VALUES ($1)", (1,))
    assert store.migrate(db, MIGRATIONS, "test db") == 2
    assert store.migrate(db, MIGRATIONS, "test db") == 2
    assert db.execute("SELECT x, y FROM t").fetchall() == [(1, "")]


def test_a_database_from_newer_code_is_refused(store_target: Target) -> None:
    db = store.connect(store_target, schema="t")
    db.set_schema_version(3)
    with pytest.raises(store.SchemaError, match="version 3, newer than this gpuacct knows"):
        store.migrate(db, MIGRATIONS, "test db")
    with pytest.raises(store.SchemaError, match="reads version 2: upgrade gpuacct"):
        store.require_version(db, 2, "test db")


def test_a_failing_migration_leaves_the_version_where_it_was(store_target: Target) -> None:
    db = store.connect(store_target, schema="t")
    with pytest.raises(store.StoreError):
        store.migrate(db, [*MIGRATIONS, store.statements("INSERT INTO nowhere VALUES (1);")],
                      "test db")
    assert db.schema_version() == 2
    assert not db.in_transaction


def test_a_read_only_connection_refuses_writes(store_target: Target) -> None:
    store.migrate(store.connect(store_target, schema="t"), MIGRATIONS, "test db")
    reader = store.connect(store_target, readonly=True, schema="t")
    with pytest.raises(store.ReadOnlyError, match=r"readonly|read-only"):
        reader.execute("INSERT INTO t (x) VALUES ($1)", (2,))
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    assert reader.schema_version() == 2


def test_an_incomplete_script_is_named() -> None:
    with pytest.raises(ValueError, match="incomplete SQL statement: CREATE TABLE u"):
        store.statements("CREATE TABLE u (x BIGINT)")


def test_the_stores_sql_runs_as_written_on_both(store_target: Target) -> None:
    """Numbered parameters (one used twice), a column named user, ON CONFLICT, a `%` and a `?`
    in values, many rows at once, the DDL slots, one error family."""
    db = store.connect(store_target, schema="t")
    with store.transaction(db):
        store.statements('CREATE TABLE notes (id {id}, "user" TEXT NOT NULL UNIQUE, '
                         "at DOUBLE PRECISION NOT NULL, cost {money} NOT NULL DEFAULT '0');")(db)
        db.execute('INSERT INTO notes ("user", at) VALUES ($1, $2)', ("alice", 1.0))
        db.execute('INSERT INTO notes ("user", at) VALUES ($1, $2) ON CONFLICT DO NOTHING',
                   ("alice", 2.5))
        db.executemany('INSERT INTO notes ("user", at, cost) VALUES ($1, $2, $3)',
                       [("bob", 3.0, "0.000001"), ("100%?", 4.0, "12.5")])
    assert db.execute('SELECT "user", CAST(at AS BIGINT), cost FROM notes WHERE at >= $1 '
                      "AND at < $1 + 10 ORDER BY id", (1.0,)).fetchall() == [
        ("alice", 1, "0" if not db.is_postgres else 0), ("bob", 3, _money(db, "0.000001")),
        ("100%?", 4, _money(db, "12.5"))]
    assert db.columns("notes") == ["id", "user", "at", "cost"]
    assert db.has_table("notes") and not db.has_table("nothing")
    with pytest.raises(store.IntegrityError):
        db.execute('INSERT INTO notes ("user", at) VALUES ($1, $2)', ("bob", 5.0))
    assert not db.in_transaction


def test_a_bulk_insert_binds_its_rows_by_position_on_both(store_target: Target) -> None:
    """`insert_rows`: the engine writes the parameters, the ON CONFLICT clause applies, and a
    value holding `$1` or `?` is only a value."""
    db = store.connect(store_target, schema="t")
    with store.transaction(db):
        store.statements('CREATE TABLE cursors (series TEXT PRIMARY KEY, "user" TEXT NOT NULL, '
                         "value {money} NOT NULL);")(db)
        db.insert_rows('cursors (series, "user", value)',
                       [("a", "alice", "1.5"), ("b", "$1 ?", "2")])
        db.insert_rows('cursors (series, "user", value)', [("a", "alice", "7"), ("c", "x", "3")],
                       "ON CONFLICT (series) DO UPDATE SET value = excluded.value")
        db.insert_rows("cursors (series, value)", [])  # nothing to write: no statement
    assert db.execute('SELECT series, "user", value FROM cursors ORDER BY series').fetchall() == [
        ("a", "alice", _money(db, "7")), ("b", "$1 ?", _money(db, "2")),
        ("c", "x", _money(db, "3"))]
    with pytest.raises(store.IntegrityError):
        db.insert_rows('cursors (series, "user", value)', [("a", "alice", "9")])


def _money(db: store.Database, text: str) -> object:
    from decimal import Decimal

    return Decimal(text) if db.is_postgres else text


def drop(url: str) -> None:
    """The server ends every connection of the test's user, as a restart or a failover would."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid != pg_backend_pid()")


def test_a_lost_postgresql_connection_fails_only_its_transaction(pg_database: str) -> None:
    db = store.connect(pg_database, schema="t")
    store.migrate(db, MIGRATIONS, "test db")
    drop(pg_database)  # between transactions: the next statement reconnects
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    lost = pytest.raises(store.StoreError, match=r"terminating connection|lost inside")
    with lost, store.transaction(db):
        db.execute("INSERT INTO t (x) VALUES ($1)", (6,))
        drop(pg_database)
        db.execute("INSERT INTO t (x) VALUES ($1)", (7,))
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)  # neither row


# -- every store's schema, the same on both engines -------------------------------------------

STORES = {
    "ledger": lambda target: Ledger(target).close(),
    "enforcer": lambda target: Store(target).db.close(),
    "notices": lambda target: Notices(target, NotificationSettings(), None).db.close(),
    "allocator": lambda target: AllocationStore(target).db.close(),
    "jobs": lambda target: JobStore(target).close(),
}
# What each engine's declared type says a column holds; money is TEXT in SQLite (exact decimal
# text) and NUMERIC in PostgreSQL.
SQLITE_KINDS = {"TEXT": {"text", "money"}, "BIGINT": {"integer"}, "INTEGER": {"integer"},
                "REAL": {"float"},  # the type older files declared
                "DOUBLE PRECISION": {"float"}}
POSTGRES_KINDS = {"text": "text", "numeric": "money", "bigint": "integer", "integer": "integer",
                  "double precision": "float"}


def sqlite_schema(path: Path) -> dict[str, list[tuple[str, set[str], bool]]]:
    db = store.connect(path, readonly=True)
    tables = [t for (t,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    return {t: [(name, SQLITE_KINDS[kind], bool(notnull or pk)) for _, name, kind, notnull, _, pk
                in db.execute(f"SELECT * FROM pragma_table_info('{t}')")] for t in tables}


def postgres_schema(url: str, schema: str) -> dict[str, list[tuple[str, str, bool]]]:
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'NO' "
            "FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name != 'gpuacct_schema' ORDER BY table_name, ordinal_position",
            (schema,)).fetchall()
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, notnull in rows:
        found.setdefault(table, []).append((column, POSTGRES_KINDS[kind], notnull))
    return found


@pytest.mark.parametrize("name", STORES)
def test_every_store_migrates_to_the_same_schema_on_both_engines(
        name: str, tmp_path: Path, pg_database: str) -> None:
    path = tmp_path / f"{name}.sqlite3"
    STORES[name](path)
    STORES[name](pg_database)
    on_sqlite = sqlite_schema(path)
    on_postgres = postgres_schema(pg_database, name)
    assert sorted(on_sqlite) == sorted(on_postgres)
    for table, columns in on_sqlite.items():
        theirs = on_postgres[table]
        assert [c[0] for c in columns] == [c[0] for c in theirs], table
        for (column, kinds, notnull), (_, kind, pg_notnull) in zip(columns, theirs, strict=True):
            assert kind in kinds, (table, column, kinds, kind)
            assert notnull == pg_notnull, (table, column)


def test_an_old_ledger_migrates_to_the_schema_a_new_one_has(tmp_path: Path) -> None:
    """The v0 and v3 files of tests/billing_engine/data, migrated, have every table and column
    a new ledger has, in the same order."""
    new = tmp_path / "new.sqlite3"
    Ledger(new).close()
    data = Path(__file__).parents[1] / "billing_engine" / "data"
    for old in ("ledger-v0.sqlite", "ledger-v3.sqlite"):
        path = tmp_path / old
        shutil.copyfile(data / old, path)
        Ledger(path).close()
        mine, fresh = sqlite_schema(path), sqlite_schema(new)
        assert {t: [c[0] for c in cs] for t, cs in mine.items()} == {
            t: [c[0] for c in cs] for t, cs in fresh.items()}, old
