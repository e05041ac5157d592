"""The allocator's memory, in SQLite (gpuacct.sqlite): every request with its state, the GPUs
each node reported, the version of the reservations, and the audit of every step.

A request is `queued`, then `granted` (it holds GPUs until `ends`), then `ended` with a reason
(released, expired, idle, cancelled); or `refused` when it was asked. The queue's order is the
order of ids. Each change is one transaction together with its audit entries and the version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from gpuacct import store
from gpuacct.policy import NodeGpu

SCHEMA_V1 = """
CREATE TABLE requests (
    id {id_never_reused},
    "user" TEXT NOT NULL,
    asked_on TEXT NOT NULL,          -- the node the "user" asked from
    count BIGINT NOT NULL CHECK (count > 0),
    seconds DOUBLE PRECISION NOT NULL CHECK (seconds > 0),
    model TEXT, node TEXT, gpus TEXT,  -- what was asked for (gpus: JSON list)
    submitted DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'granted', 'ended')),
    granted_node TEXT, granted_gpus TEXT, started DOUBLE PRECISION, ends DOUBLE PRECISION,
    ended DOUBLE PRECISION, end_reason TEXT,
    warned BIGINT NOT NULL DEFAULT 0  -- the expiry notice went out
);
CREATE INDEX requests_open ON requests (state) WHERE state != 'ended';
CREATE TABLE inventory (
    node TEXT NOT NULL, gpu BIGINT NOT NULL, model TEXT NOT NULL,
    reported DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, gpu)
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE notices (
    id {id_never_reused},
    at DOUBLE PRECISION NOT NULL, "user" TEXT NOT NULL, nodes TEXT NOT NULL, text TEXT NOT NULL
);
CREATE TABLE audit (
    id {id},
    at DOUBLE PRECISION NOT NULL,
    request BIGINT,
    "user" TEXT NOT NULL,
    actor TEXT NOT NULL,   -- who: the "user", 'allocator', or an administrator
    event TEXT NOT NULL,   -- queued, granted, released, expired, idle, cancelled, notice...
    detail TEXT NOT NULL DEFAULT ''
);
"""
# v2: a request an administrator placed over running work (`preempt`): placement ignores the
# processes on the GPUs it gets, whose owners are told and stopped after the grace.
SCHEMA_V2 = "ALTER TABLE requests ADD COLUMN preempt BIGINT NOT NULL DEFAULT 0;"
MIGRATIONS = [store.statements(SCHEMA_V1), store.statements(SCHEMA_V2)]

State = Literal["queued", "granted", "ended"]


@dataclass(frozen=True)
class Request:
    id: int
    user: str
    asked_on: str
    count: int
    seconds: float
    model: str | None
    node: str | None
    gpus: tuple[int, ...] | None
    submitted: float
    state: State
    granted_node: str | None = None
    granted_gpus: tuple[int, ...] = ()
    started: float | None = None
    ends: float | None = None
    ended: float | None = None
    end_reason: str | None = None
    warned: bool = False
    preempt: bool = False


@dataclass(frozen=True)
class Event:
    at: float
    request: int | None
    user: str
    actor: str
    event: str
    detail: str


_COLUMNS = ('id, "user", asked_on, count, seconds, model, node, gpus, submitted, state, '
            "granted_node, granted_gpus, started, ends, ended, end_reason, warned, preempt")


def _request(row: tuple[object, ...]) -> Request:
    values = list(row)
    values[7] = tuple(json.loads(str(values[7]))) if values[7] is not None else None
    values[11] = tuple(json.loads(str(values[11]))) if values[11] is not None else ()
    values[16], values[17] = bool(values[16]), bool(values[17])
    return Request(*values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StoredNotice:
    id: int
    user: str
    nodes: tuple[str, ...]
    text: str


class Changes:
    """The writes of one change, inside its transaction; `dirty` once the desired state (what
    nodes are sent) changed."""

    def __init__(self, store: AllocationStore, now: float) -> None:
        self._db, self.now = store.db, now
        self.dirty = False

    def add(self, user: str, asked_on: str, count: int, seconds: float, model: str | None,
            node: str | None, gpus: tuple[int, ...] | None, preempt: bool = False) -> int:
        (id,) = self._db.execute(
            'INSERT INTO requests ("user", asked_on, count, seconds, model, node, gpus, '
            "submitted, state, preempt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9) "
            "RETURNING id",
            (user, asked_on, count, seconds, model, node,
             json.dumps(list(gpus)) if gpus is not None else None, self.now,
             int(preempt))).fetchone()
        self.dirty = True
        return int(id)

    def grant(self, id: int, node: str, gpus: tuple[int, ...], ends: float) -> None:
        self._db.execute(
            "UPDATE requests SET state = 'granted', granted_node = $1, granted_gpus = $2, "
            "started = $3, ends = $4 WHERE id = $5 AND state = 'queued'",
            (node, json.dumps(list(gpus)), self.now, ends, id))
        self.dirty = True

    def end(self, id: int, reason: str) -> None:
        self._db.execute("UPDATE requests SET state = 'ended', ended = $1, end_reason = $2 "
                         "WHERE id = $3 AND state != 'ended'", (self.now, reason, id))
        self.dirty = True

    def warned(self, id: int) -> None:
        self._db.execute("UPDATE requests SET warned = 1 WHERE id = $1", (id,))

    def settings(self, fingerprint: int) -> None:
        """What nodes are told besides the reservations (mode, grace) changed if its
        fingerprint did: that too is a new version."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        if row is None or int(row[0]) != fingerprint:
            self._db.execute("INSERT INTO meta VALUES ('settings', $1) ON CONFLICT (key) DO UPDATE "
                             "SET value = excluded.value",
                             (fingerprint,))
            self.dirty = row is not None  # the first settings are no change for any node

    def notice(self, user: str, nodes: tuple[str, ...], text: str) -> None:
        self._db.execute('INSERT INTO notices (at, "user", nodes, text) VALUES ($1, $2, $3, $4)',
                         (self.now, user, json.dumps(list(nodes)), text))
        self.dirty = True

    def prune_notices(self, before: float) -> None:
        if self._db.execute("DELETE FROM notices WHERE at < $1", (before,)).rowcount:
            self.dirty = True

    def audit(self, request: int | None, user: str, actor: str, event: str,
              detail: str = "") -> None:
        self._db.execute('INSERT INTO audit (at, request, "user", actor, event, detail) '
                         "VALUES ($1, $2, $3, $4, $5, $6)",
                         (self.now, request, user, actor, event, detail))

    def inventory(self, node: str, gpus: Iterable[NodeGpu]) -> bool:
        """Replace what `node` has; True if that changed anything."""
        new = sorted((g.index, g.model) for g in gpus)
        old = self._db.execute("SELECT gpu, model FROM inventory WHERE node = $1 ORDER BY gpu",
                               (node,)).fetchall()
        if [tuple(r) for r in old] == new:
            return False
        self._db.execute("DELETE FROM inventory WHERE node = $1", (node,))
        self._db.executemany("INSERT INTO inventory VALUES ($1, $2, $3, $4)",
                             [(node, i, m, self.now) for i, m in new])
        return True


class AllocationStore:
    def __init__(self, path: store.Target) -> None:
        self.path = path
        self.db = store.connect(path, schema="allocator")
        store.migrate(self.db, MIGRATIONS, f"allocator store {path}")
        self._lock = threading.RLock()

    @contextmanager
    def change(self, now: float | None = None) -> Iterator[Changes]:
        """One transaction; if it changed what nodes are sent, the version goes up with it
        (in milliseconds, so a version is higher than any before even if the database was
        lost and began again)."""
        now = time.time() if now is None else now
        with self._lock, store.transaction(self.db):
            changes = Changes(self, now)
            yield changes
            if changes.dirty:
                self.db.execute(
                    "INSERT INTO meta VALUES ('version', $1) ON CONFLICT (key) DO UPDATE SET "
                    "value = CASE WHEN meta.value + 1 > excluded.value THEN meta.value + 1 "
                    "ELSE excluded.value END", (int(now * 1000),))

    @property
    def version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def open_requests(self) -> list[Request]:
        """Queued and granted requests, in queue order."""
        return [_request(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM requests WHERE state != 'ended' ORDER BY id")]

    def request(self, id: int) -> Request | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = $1", (id,)).fetchone()
        return _request(row) if row else None

    def inventory(self) -> list[tuple[str, int, str]]:
        return [(str(n), int(g), str(m)) for n, g, m in self.db.execute(
            "SELECT node, gpu, model FROM inventory ORDER BY node, gpu")]

    def notices(self) -> list[StoredNotice]:
        return [StoredNotice(id, user, tuple(json.loads(nodes)), text) for id, user, nodes, text
                in self.db.execute('SELECT id, "user", nodes, text FROM notices ORDER BY id')]

    def audit(self, user: str | None = None, limit: int = 1000) -> list[Event]:
        rows = self.db.execute(
            'SELECT at, request, "user", actor, event, detail FROM audit '
            'WHERE "user" = $1 OR $1 IS NULL ORDER BY id DESC LIMIT $2', (user, limit))
        return [Event(*r) for r in rows][::-1]

    def close(self) -> None:
        self.db.close()
