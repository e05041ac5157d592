"""The enforcer's memory, in SQLite: firing alerts, deliveries seen, the desired policy with its
version, and the audit log. One webhook delivery is one transaction.

A delivery is identified by (fingerprint, startsAt, status): seen before, it changes nothing,
so Alertmanager's retries and repeats are harmless. A resolved alert removes the firing one of
the same fingerprint and start, even if it arrives first.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from enforcer.payload import Notification
from gpuacct import store
from gpuacct.policy import NodeAction, NodePolicy, Reason, UserPolicy, combine

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    fingerprint TEXT NOT NULL, starts_at TEXT NOT NULL, status TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (fingerprint, starts_at, status)
);
CREATE TABLE IF NOT EXISTS firing (
    fingerprint TEXT PRIMARY KEY, starts_at TEXT NOT NULL, "user" TEXT NOT NULL,
    reason TEXT NOT NULL  -- gpuacct.policy.Reason as JSON
);
CREATE TABLE IF NOT EXISTS audit (
    id {id},
    at DOUBLE PRECISION NOT NULL,
    "user" TEXT NOT NULL,
    alert TEXT NOT NULL,
    action TEXT NOT NULL,
    node TEXT NOT NULL,  -- 'enforcer' for changes of the desired state
    result TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    report_id TEXT UNIQUE  -- a node's action id: a report delivered twice is audited once
);
"""
# The notice an alert belongs to (its `notice` label, else its name): alerts of one notice
# are told to the user in one message (enforcer.notices).
def _notice_column(db: store.Database) -> None:
    if "notice" not in db.columns("firing"):
        db.execute("ALTER TABLE firing ADD COLUMN notice TEXT NOT NULL DEFAULT ''")


# An active enforcer and its standby: the lease says which one acts (enforcer.cli).
MIGRATIONS = [store.statements(SCHEMA_V1), _notice_column, store.statements(store.LEASE_TABLE)]


@dataclass(frozen=True)
class Retention:
    """Days each kind of row is kept; None: for ever (config.EnforcerSettings)."""

    delivery_days: int | None = 30
    audit_days: int | None = 365


@dataclass(frozen=True)
class Received:
    new: int
    duplicate: int
    version: int
    changed: bool


@dataclass(frozen=True)
class Firing:
    user: str
    notice: str
    reason: Reason


@dataclass(frozen=True)
class AuditEntry:
    at: float
    user: str
    alert: str
    action: str
    node: str
    result: str
    detail: str


class Store:
    def __init__(self, path: store.Target, retention: Retention | None = None) -> None:
        self.db = store.connect(path, schema="enforcer")
        store.migrate(self.db, MIGRATIONS, f"enforcer store {path}")
        self._lock = threading.Lock()
        self.policy = self._load_policy()
        self.retention = retention or Retention()
        self._next_prune = 0.0

    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool:
        with self._lock, store.transaction(self.db):
            return store.take_lease(self.db, holder, seconds, time.time() if now is None else now)

    def lease_holder(self) -> str | None:
        return store.lease_holder(self.db, time.time())

    def release_lease(self, holder: str) -> None:
        with self._lock, store.transaction(self.db):
            store.drop_lease(self.db, holder)

    def reload(self) -> None:
        """The policy as the database has it (after another enforcer held the lease)."""
        with self._lock:
            self.policy = self._load_policy()

    def _load_policy(self) -> NodePolicy:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'policy'").fetchone()
        return NodePolicy.model_validate_json(row[0]) if row else NodePolicy()

    def receive(self, notification: Notification, now: float | None = None) -> Received:
        """Apply one delivery; the policy's version goes up only if the policy changed."""
        now = time.time() if now is None else now
        new = duplicate = 0
        with self._lock:
            with store.transaction(self.db):
                for alert in notification.alerts:
                    key = (alert.fingerprint, alert.startsAt.isoformat(), alert.status)
                    inserted = self.db.execute(
                        "INSERT INTO deliveries VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        (*key, now))
                    if not inserted.rowcount:
                        duplicate += 1
                        continue
                    new += 1
                    reason = alert.reason()
                    if alert.status == "firing":
                        if self._resolved(key[0], key[1]):
                            continue  # its resolution overtook it
                        self.db.execute(
                            "INSERT INTO firing VALUES ($1, $2, $3, $4, $5) "
                            "ON CONFLICT (fingerprint) DO UPDATE SET "
                            'starts_at = excluded.starts_at, "user" = excluded."user", '
                            "reason = excluded.reason, notice = excluded.notice",
                            (key[0], key[1], alert.user, reason.model_dump_json(),
                             alert.notice))
                    else:
                        self.db.execute("DELETE FROM firing WHERE fingerprint = $1 AND "
                                        "starts_at <= $2", key[:2])
                    self._audit(now, alert.user, reason.alert, reason.action, "enforcer",
                                alert.status, reason.summary)
                policy = NodePolicy(version=self.policy.version, users=self._desired())
                changed = policy.users != self.policy.users
                if changed:
                    # Milliseconds, so a new version is higher than any before even if this
                    # database was lost and started afresh (nodes take only newer versions).
                    policy = policy.model_copy(update={"version": max(
                        policy.version + 1, int(now * 1000))})
                    self.db.execute("INSERT INTO meta VALUES ('policy', $1) ON CONFLICT (key) "
                                    "DO UPDATE SET value = excluded.value",
                                    (policy.model_dump_json(),))
            self.policy = policy
            if now >= self._next_prune:
                self.prune(now)
                self._next_prune = now + 3600
        return Received(new, duplicate, policy.version, changed)

    def prune(self, now: float) -> tuple[int, int]:
        """Deliveries (kept to tell a resent alert from a new one) and audit entries older
        than their retention; a firing alert's deliveries stay. (deliveries, audit) deleted."""
        with store.transaction(self.db):
            deliveries = audit = 0
            if self.retention.delivery_days is not None:
                deliveries = self.db.execute(
                    "DELETE FROM deliveries WHERE received_at < $1 AND fingerprint NOT IN "
                    "(SELECT fingerprint FROM firing)",
                    (now - self.retention.delivery_days * 86400,)).rowcount
            if self.retention.audit_days is not None:
                audit = self.db.execute("DELETE FROM audit WHERE at < $1",
                                        (now - self.retention.audit_days * 86400,)).rowcount
        return deliveries, audit

    def _resolved(self, fingerprint: str, starts_at: str) -> bool:
        return self.db.execute(
            "SELECT 1 FROM deliveries WHERE fingerprint = $1 AND starts_at = $2 AND "
            "status = 'resolved'", (fingerprint, starts_at)).fetchone() is not None

    def _desired(self) -> dict[str, UserPolicy]:
        reasons: dict[str, list[Reason]] = defaultdict(list)
        for user, raw in self.db.execute('SELECT "user", reason FROM firing'):
            reasons[user].append(Reason.model_validate_json(raw))
        return {user: combine(rs) for user, rs in sorted(reasons.items())}

    def firing(self, users: Collection[str] | None = None) -> list[Firing]:
        """Every firing alert (of `users`) with the notice it belongs to, oldest first."""
        only = "" if users is None else f'WHERE "user" IN ({store.placeholders(len(users))}) '
        with self._lock:
            rows = self.db.execute(f'SELECT "user", notice, reason, starts_at FROM firing {only}'
                                   "ORDER BY starts_at, fingerprint", list(users or ())
                                   ).fetchall()
        found = []
        for user, notice, raw, _ in rows:
            reason = Reason.model_validate_json(raw)
            found.append(Firing(user, notice or reason.alert, reason))
        return found

    def _audit(self, at: float, user: str, alert: str, action: str, node: str, result: str,
               detail: str, report_id: str | None = None) -> None:
        self.db.execute(
            'INSERT INTO audit (at, "user", alert, action, node, result, detail, report_id) '
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            (at, user, alert, action, node, result, detail, report_id))

    def record_actions(self, node: str, actions: Iterable[NodeAction]) -> None:
        """All of a node's reports or none (a failure half-way writes nothing)."""
        with self._lock, store.transaction(self.db):
            for a in actions:
                self._audit(a.at, a.user, a.alert, a.action, node, a.result, a.detail, a.id)

    def audit(self, user: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        rows = self.db.execute(
            'SELECT at, "user", alert, action, node, result, detail FROM audit '
            'WHERE "user" = $1 OR $1 IS NULL ORDER BY id DESC LIMIT $2', (user, limit))
        return [AuditEntry(*r) for r in rows][::-1]

    def dump_policy(self) -> bytes:
        return self.policy.model_dump_json().encode()

    def close(self) -> None:
        self.db.close()
