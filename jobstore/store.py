"""What the control plane keeps of every job the nodes reported: its metadata and its state,
in a store of its own beside the ledger (a file `jobs.sqlite3`, or the schema `jobs`).

A job is `running` while its node reports live processes for it, `finished` once its node
reports it without any (or no longer reports it), and `lost` when its node has not answered for
`lost_after` seconds while it was running. A lost job is reconciled when its node answers again:
running if the node still reports it alive, finished if not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gpuacct import store

SCHEMA_V1 = """
CREATE TABLE jobs (
    id {id_never_reused},
    node TEXT NOT NULL,            -- the exporter's instance, as Prometheus labels it
    "user" TEXT NOT NULL,
    job TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,  -- when its earliest process started (0: not reported)
    name TEXT NOT NULL, source TEXT NOT NULL, framework TEXT NOT NULL, script TEXT NOT NULL,
    args TEXT NOT NULL, cwd TEXT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,       -- the last time its node reported it running
    state TEXT NOT NULL CHECK (state IN ('running', 'finished', 'lost')),
    ended DOUBLE PRECISION,                    -- finished: when it was last seen running
    lost_at DOUBLE PRECISION,                  -- lost: when its node was declared silent
    UNIQUE (node, "user", job, started)
);
CREATE INDEX jobs_by_user ON jobs ("user", first_seen);
CREATE INDEX jobs_open ON jobs (node, state) WHERE state != 'finished';
CREATE TABLE nodes (node TEXT PRIMARY KEY, last_up DOUBLE PRECISION NOT NULL);
"""
MIGRATIONS = [store.statements(SCHEMA_V1)]
State = Literal["running", "finished", "lost"]
STATES: tuple[State, ...] = ("running", "finished", "lost")


@dataclass(frozen=True)
class JobSeen:
    """One job as a node reports it at one moment."""

    node: str
    user: str
    job: str
    started: float
    name: str = ""
    source: str = ""
    framework: str = ""
    script: str = ""
    args: str = ""
    cwd: str = ""
    running: bool = True

    @property
    def key(self) -> tuple[str, str, str, float]:
        return (self.node, self.user, self.job, self.started)


@dataclass(frozen=True)
class JobRecord:
    id: int
    node: str
    user: str
    job: str
    started: float
    name: str
    source: str
    framework: str
    script: str
    args: str
    cwd: str
    first_seen: float
    last_seen: float
    state: State
    ended: float | None
    lost_at: float | None


@dataclass(frozen=True)
class Recorded:
    """What one observation changed."""

    new: int = 0
    finished: int = 0
    lost: int = 0
    reconciled: int = 0  # lost jobs whose node answered again


@dataclass(frozen=True)
class JobFilter:
    user: str | None = None
    node: str | None = None
    state: State | None = None
    since: float | None = None  # ran at some time at or after this
    until: float | None = None  # began at or before this


_COLUMNS = ('id, node, "user", job, started, name, source, framework, script, args, cwd, '
            "first_seen, last_seen, state, ended, lost_at")
# A job that stopped running ended when it was last seen so.
_FINISH = "UPDATE jobs SET state = 'finished', ended = last_seen, lost_at = NULL WHERE id = $1"


class JobStore:
    """The writer is the active billing engine; `readonly` opens it for the web."""

    def __init__(self, path: store.Target, readonly: bool = False) -> None:
        self.path = path
        self.db = store.connect(path, readonly=readonly, timeout=5.0 if readonly else 30.0,
                                 schema="jobs")
        if readonly:
            store.require_version(self.db, len(MIGRATIONS), f"job store {path}")
        else:
            store.migrate(self.db, MIGRATIONS, f"job store {path}")
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def record(self, at: float, nodes_up: Iterable[str], seen: Iterable[JobSeen],
               lost_after: float) -> Recorded:
        """What the nodes reported at `at`, in one transaction: `nodes_up` answered, `seen`
        are the jobs they report (running or finished)."""
        up = set(nodes_up)
        jobs = {s.key: s for s in seen if s.node in up}
        new = finished = lost = reconciled = 0
        with self._lock, store.transaction(self.db):
            db = self.db
            db.executemany("INSERT INTO nodes VALUES ($1, $2) ON CONFLICT (node) DO UPDATE SET "
                           "last_up = excluded.last_up", [(n, at) for n in sorted(up)])
            open_rows = {(n, u, j, s): (i, state) for i, n, u, j, s, state in db.execute(
                'SELECT id, node, "user", job, started, state FROM jobs '
                "WHERE state != 'finished'")}
            for key, s in jobs.items():
                meta = (s.name, s.source, s.framework, s.script, s.args, s.cwd)
                found = open_rows.get(key)
                if found is None:
                    row = db.execute('SELECT id FROM jobs WHERE node = $1 AND "user" = $2 AND '
                                     "job = $3 AND started = $4", key).fetchone()
                    if row is None:
                        db.execute(
                            'INSERT INTO jobs (node, "user", job, started, name, source, '
                            "framework, script, args, cwd, first_seen, last_seen, state, ended) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                            (*key, *meta, at, at, "running" if s.running else "finished",
                             None if s.running else at))
                        new += 1
                    elif s.running:  # seen finished before, running again: a restart
                        db.execute("UPDATE jobs SET state = 'running', last_seen = $1, "
                                   "ended = NULL WHERE id = $2", (at, row[0]))
                    continue
                id, state = found
                reconciled += state == "lost"
                if s.running:
                    db.execute(
                        "UPDATE jobs SET state = 'running', last_seen = $1, lost_at = NULL, "
                        "name = $2, source = $3, framework = CASE WHEN $4 != '' THEN $5 ELSE "
                        "framework END, script = $6, args = $7, cwd = $8 WHERE id = $9",
                        (at, s.name, s.source, s.framework, s.framework, s.script, s.args,
                         s.cwd, id))
                else:
                    db.execute(_FINISH, (id,))
                    finished += 1
            # Open jobs of a node that answered without them: gone, so finished.
            for key, (id, state) in open_rows.items():
                if key[0] in up and key not in jobs:
                    db.execute(_FINISH, (id,))
                    finished += 1
                    reconciled += state == "lost"
            # Running jobs of a node silent for lost_after: lost.
            lost = db.execute(
                "UPDATE jobs SET state = 'lost', lost_at = $1 WHERE state = 'running' AND node IN "
                "(SELECT node FROM nodes WHERE last_up <= $2)", (at, at - lost_after)).rowcount
        return Recorded(new, finished, max(lost, 0), reconciled)

    # -- reading
    def jobs(self, where: JobFilter, page: int = 0,
             per_page: int = 50) -> tuple[list[JobRecord], int]:
        """One page of the jobs that match, newest first, and how many match in all."""
        clauses: list[str] = []
        values: list[str | float] = []
        for column, value in (('"user"', where.user), ("node", where.node),
                              ("state", where.state)):
            if value is not None:
                values.append(value)
                clauses.append(f"{column} = ${len(values)}")
        if where.since is not None:  # still running then, or ended after it
            values.append(where.since)
            clauses.append("(state != 'finished' OR COALESCE(ended, last_seen) >= "
                           f"${len(values)})")
        if where.until is not None:
            values.append(where.until)
            clauses.append("CASE WHEN started > 0 THEN started ELSE first_seen END "
                           f"<= ${len(values)}")
        condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock, store.read_transaction(self.db):
            (total,) = self.db.execute(f"SELECT COUNT(*) FROM jobs {condition}",
                                       values).fetchone()
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM jobs {condition} ORDER BY first_seen DESC, id DESC "
                f"LIMIT ${len(values) + 1} OFFSET ${len(values) + 2}",
                (*values, per_page, page * per_page)).fetchall()
        return [JobRecord(*r) for r in rows], int(total)

    def counts(self) -> dict[tuple[str, State], int]:
        """Open jobs by node and state (finished ones are not counted: they only grow)."""
        with self._lock:
            rows = self.db.execute("SELECT node, state, COUNT(*) FROM jobs WHERE state != "
                                   "'finished' GROUP BY node, state").fetchall()
        return {(str(node), state): int(n) for node, state, n in rows}

    def prune(self, before: float) -> int:
        """Finished jobs that ended before `before` go."""
        with self._lock, store.transaction(self.db):
            gone: int = self.db.execute("DELETE FROM jobs WHERE state = 'finished' AND "
                                        "ended < $1", (before,)).rowcount
        return gone
