"""SQLite under the stores: WAL, durable commits, a store file only its service may read. The
only module that uses `sqlite3`. Parameters are numbered (`$1`), which SQLite binds by name;
a bulk insert's are `?`, bound by position."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from gpuacct import files
from gpuacct.store.database import Cursor, Params
from gpuacct.store.errors import (
    BackupError,
    IntegrityError,
    ReadOnlyError,
    SchemaError,
    StoreError,
)

_NAMES = tuple(str(number) for number in range(1, 1000))  # SQLite's most parameters: 999


def _named(params: Params) -> dict[str, Any]:
    """`$1, $2, ...` as SQLite names them: "1", "2", ... (a dict built in C: 100,000 rows a
    window)."""
    return dict(zip(_NAMES, params, strict=False))


def _raise(exc: sqlite3.Error) -> NoReturn:
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        raise IntegrityError(message) from None
    if "readonly" in message:
        raise ReadOnlyError(message) from None
    raise StoreError(message) from None


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        _raise(exc)


class SqliteDatabase:
    is_postgres = False
    ddl_words: Mapping[str, str] = MappingProxyType(
        {"id": "INTEGER PRIMARY KEY", "id_never_reused": "INTEGER PRIMARY KEY AUTOINCREMENT",
         "money": "TEXT", "without_rowid": " WITHOUT ROWID"})

    def __init__(self, path: Path, readonly: bool = False, timeout: float = 30.0) -> None:
        self.path = path
        with _errors():
            if readonly:
                self._db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True,
                                           timeout=timeout, isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA query_only=ON")
                return
            # A store holds who used what and paid what: made private, and refused if anyone
            # may read it (SQLite makes its -wal and -shm files with the same mode).
            files.create_private(path)
            problem = files.readable_by_others(path)
            if problem:
                raise SchemaError(problem)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=timeout,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        with _errors():
            return self._db.execute(sql, _named(params))

    def executemany(self, sql: str, rows: Iterable[Params]) -> Any:
        with _errors():
            return self._db.executemany(sql, map(dict, map(zip, repeat(_NAMES), rows)))

    def insert_rows(self, into: str, rows: Sequence[Params], then: str = "") -> None:
        # `?` bound by position: a dict per row, as `$1` takes, costs twice the insert.
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            with _errors():
                self._db.executemany(f"INSERT INTO {into} VALUES ({marks}) {then}", rows)

    def begin_write(self) -> None:
        with _errors():
            self._db.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        with _errors():
            self._db.execute("BEGIN")

    def commit(self) -> None:
        with _errors():
            self._db.execute("COMMIT")

    def rollback(self) -> None:
        with _errors():
            self._db.execute("ROLLBACK")

    def schema_version(self) -> int:
        with _errors():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        with _errors():
            self._db.execute(f"PRAGMA user_version = {int(version)}")

    def columns(self, table: str) -> list[str]:
        with _errors():
            return [row[1] for row in self._db.execute("SELECT * FROM pragma_table_info(?)",
                                                       (table,))]

    def has_table(self, table: str) -> bool:
        with _errors():
            return self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                                    (table,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()

    def backup(self, dest: Path) -> None:
        """A consistent copy while others keep writing (SQLite's online backup), checked whole
        before it is renamed into place: `dest` is either complete or absent."""
        if dest.exists():
            raise BackupError(f"{dest} exists; choose a new file")
        partial = dest.with_name(f".{dest.name}.partial")
        try:
            copy = sqlite3.connect(partial)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot write {dest}: {exc}") from None
        try:
            self._db.backup(copy)
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
