"""The one interface every store talks to, whichever engine is behind it (`store.sqlite`,
`store.postgres`). The stores' SQL is written once, in what both engines run as written:
`$1, $2, ...` parameters (SQLite's and PostgreSQL's own), `"user"` quoted, `ON CONFLICT`,
`DOUBLE PRECISION` and `BIGINT`. What differs is asked of the engine by name, never rewritten:
a DDL script's slots ({id}, {money}, {without_rowid}), the schema version, a table's columns,
how a writing or a reading transaction begins, and a bulk insert's parameters (`insert_rows`:
the engine writes the VALUES list it binds fastest, from the columns named)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

Params = Sequence[Any]


class Cursor(Protocol):
    """What the stores use of a cursor."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class Database(Protocol):
    """A connection to one store, in autocommit mode: `store.transaction()` opens the
    transactions."""

    @property
    def is_postgres(self) -> bool: ...

    @property
    def ddl_words(self) -> Mapping[str, str]:
        """The words a DDL script's slots take on this engine: {id} (an integer key the
        database numbers), {id_never_reused} (one that never gives a number twice, even of a
        deleted row), {money} (an exact decimal), {without_rowid} (SQLite's clustered
        tables)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> Any: ...

    def insert_rows(self, into: str, rows: Sequence[Params], then: str = "") -> None:
        """`INSERT INTO {into} VALUES (a parameter per value) {then}` for each of `rows` (a
        window's many usage lines and cursors): `into` names the table and its columns,
        `then` (an ON CONFLICT clause) takes no parameters."""

    def begin_write(self) -> None:
        """One writer at a time, until commit or rollback."""

    def begin_read(self) -> None:
        """Several reads that see one state."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def schema_version(self) -> int: ...

    def set_schema_version(self, version: int) -> None: ...

    def columns(self, table: str) -> list[str]: ...

    def has_table(self, table: str) -> bool: ...

    def close(self) -> None: ...
