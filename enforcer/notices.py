"""What users are owed a notice about, kept until it is sent (SQLite, beside the enforcer's
store): an outbox like the billing engine's for InfluxDB.

An event is a notice of a user that starts: one of the user's alerts of a notice (the alert's
`notice` label, else its name: the balance's tiers, the kill notice, the kill) firing when
none of that notice was, or a recharge the web reports. The event is written once per channel
of the user in the same transaction that records the notice as told, so an Alertmanager
repeat, a retried delivery or an enforcer restart adds nothing. enforcer.notifier sends the
rows, retrying failures with backoff, at most `per_user_per_hour` events a user an hour.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from enforcer.store import Firing
from gpuacct import store
from gpuacct.config import NotificationSettings

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS active (
    "user" TEXT NOT NULL, notice TEXT NOT NULL, event TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    alerts TEXT NOT NULL,  -- the alerts it was composed of, one a line
    PRIMARY KEY ("user", notice)
);
CREATE TABLE IF NOT EXISTS outbox (
    id {id},
    event TEXT NOT NULL, channel TEXT NOT NULL, "user" TEXT NOT NULL, address TEXT,
    subject TEXT NOT NULL, body TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL, due DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    sent DOUBLE PRECISION, error TEXT NOT NULL DEFAULT '',
    UNIQUE (event, channel)
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (due) WHERE sent IS NULL;
CREATE TABLE IF NOT EXISTS settings (
    "user" TEXT PRIMARY KEY, address TEXT, channels TEXT  -- a JSON list; NULL: the defaults
);
"""
MIGRATIONS = [store.statements(SCHEMA_V1)]
FIRST_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Row:
    id: int
    event: str
    channel: str
    user: str
    address: str | None
    subject: str
    body: str
    attempts: int


@dataclass(frozen=True)
class UserChoice:
    address: str | None  # their own; None: the channel's template (or the directory's)
    channels: list[str]  # those they get notices on


@dataclass(frozen=True)
class Backlog:
    channel: str
    pending: int
    oldest: float | None  # when the oldest unsent row was made


class Notices:
    def __init__(self, path: store.Target, settings: NotificationSettings,
                 page_url: str | None) -> None:
        self.settings, self.page_url = settings, page_url
        self.db = store.connect(path, schema="notices")
        store.migrate(self.db, MIGRATIONS, f"notices {path}")
        self._lock = threading.Lock()

    # -- what users are owed --------------------------------------------------------------

    def alerts_changed(self, firing: Iterable[Firing], users: Collection[str] | None = None,
                       now: float | None = None) -> int:
        """Events for the notices that started since the last call; the number of them. A
        notice that ended may start again later, as a new event. `users`: only theirs changed
        (`firing` is then only theirs)."""
        now = time.time() if now is None else now
        notices: dict[tuple[str, str], list[Firing]] = defaultdict(list)
        for f in firing:
            notices[(f.user, f.notice)].append(f)
        started = 0
        with self._lock, store.transaction(self.db):
            only = "" if users is None else f' WHERE "user" IN ({store.placeholders(len(users))})'
            active = {(u, n): (e, a) for u, n, e, a in self.db.execute(
                'SELECT "user", notice, event, alerts FROM active' + only, list(users or ()))}
            for key in active.keys() - notices.keys():
                self.db.execute('DELETE FROM active WHERE "user" = $1 AND notice = $2', key)
            for (user, notice), alerts in notices.items():
                names = "\n".join(a.reason.alert for a in alerts)
                event, told = active.get((user, notice), (None, None))
                if told == names:
                    continue  # on, as it was told
                subject, body = self._compose(user, alerts)
                if event is not None:  # still on: a later alert of it joins the unsent rows
                    self.db.execute("UPDATE outbox SET subject = $1, body = $2 WHERE event = $3 "
                                    "AND sent IS NULL", (subject, body, event))
                    self.db.execute('UPDATE active SET alerts = $1 WHERE "user" = $2 AND '
                                    "notice = $3", (names, user, notice))
                    continue
                event = f"{notice}:{user}:{int(now * 1000)}"
                self.db.execute("INSERT INTO active VALUES ($1, $2, $3, $4, $5)",
                                (user, notice, event, now, names))
                self._enqueue(event, user, subject, body, now)
                started += 1
        return started

    def told(self, event: str, user: str, subject: str, body: str,
             now: float | None = None) -> bool:
        """An event reported by another part (a recharge): queued once per `event` key."""
        now = time.time() if now is None else now
        with self._lock, store.transaction(self.db):
            if self.db.execute("SELECT 1 FROM outbox WHERE event = $1", (event,)).fetchone():
                return False
            self._enqueue(event, user, subject, body + self._footer(user), now)
        return True

    def _compose(self, user: str, alerts: list[Firing]) -> tuple[str, str]:
        reasons = [a.reason for a in alerts]
        subject = reasons[0].summary or reasons[0].alert
        lines = [r.description or r.summary or r.alert for r in reasons]
        what = ("What to do: ask your administrator to recharge the account, or end GPU work "
                "you do not need.")
        return subject, "\n\n".join(dict.fromkeys(lines)) + f"\n\n{what}" + self._footer(user)

    def _footer(self, user: str) -> str:
        return f"\nYour account: {self.page_url.rstrip('/')}/users/{user}" if self.page_url \
            else ""

    def _enqueue(self, event: str, user: str, subject: str, body: str, now: float) -> None:
        choice = self._choice(user)
        for channel in choice.channels:
            spec = self.settings.channels[channel]
            address = choice.address or (spec.address.replace("{user}", user)
                                         if spec.address else None)
            self.db.execute(
                'INSERT INTO outbox (event, channel, "user", address, subject, body, created, due) '
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                (event, channel, user, address, subject, body, now, now))

    # -- each user's choice ---------------------------------------------------------------

    def _choice(self, user: str) -> UserChoice:
        row = self.db.execute('SELECT address, channels FROM settings WHERE "user" = $1',
                              (user,)).fetchone()
        configured = list(self.settings.channels)
        default = (self.settings.default_channels if self.settings.default_channels is not None
                   else configured)
        if row is None:
            return UserChoice(None, list(default))
        chosen = default if row[1] is None else json.loads(row[1])
        return UserChoice(row[0], [c for c in chosen if c in self.settings.channels])

    def choice(self, user: str) -> UserChoice:
        with self._lock:
            return self._choice(user)

    def choose(self, user: str, address: str | None, channels: list[str] | None) -> UserChoice:
        """A user's own address and channels (None: keep the defaults)."""
        unknown = set(channels or ()) - set(self.settings.channels)
        if unknown:
            raise ValueError(f"no channel named {', '.join(sorted(unknown))}; there are: "
                             f"{', '.join(self.settings.channels) or 'none'}")
        with self._lock, store.transaction(self.db):
            self.db.execute('INSERT INTO settings VALUES ($1, $2, $3) ON CONFLICT ("user") '
                            "DO UPDATE SET address = excluded.address, "
                            "channels = excluded.channels",
                            (user, address or None,
                             None if channels is None else json.dumps(channels)))
            return self._choice(user)

    def learn_address(self, user: str, address: str) -> None:
        """An address from the directory, kept unless the user set their own."""
        with self._lock, store.transaction(self.db):
            self.db.execute('INSERT INTO settings ("user", address) VALUES ($1, $2) '
                            'ON CONFLICT ("user") DO UPDATE SET address = excluded.address '
                            "WHERE settings.address IS NULL", (user, address))

    # -- the sender's side ----------------------------------------------------------------

    def due(self, now: float | None = None, limit: int = 100) -> list[Row]:
        """Unsent rows due now, oldest first, leaving out the users who had their hour's
        share of events."""
        now = time.time() if now is None else now
        with self._lock:
            spent = dict(self.db.execute(
                'SELECT "user", COUNT(DISTINCT event) FROM outbox WHERE sent > $1 GROUP BY "user"',
                (now - 3600,)).fetchall())
            rows = self.db.execute(
                'SELECT id, event, channel, "user", address, subject, body, attempts FROM outbox '
                "WHERE sent IS NULL AND due <= $1 ORDER BY id LIMIT $2", (now, limit)).fetchall()
            started = {e for (e,) in self.db.execute(
                "SELECT DISTINCT event FROM outbox WHERE sent IS NOT NULL AND event IN "
                f"({store.placeholders(len(rows))})", [r[1] for r in rows])}
        cap, chosen = self.settings.per_user_per_hour, []
        for r in rows:
            row = Row(*r)
            if row.event not in started:  # an event counts once, on its first channel
                if spent.get(row.user, 0) >= cap:
                    continue
                spent[row.user] = spent.get(row.user, 0) + 1
                started.add(row.event)
            chosen.append(row)
        return chosen

    def sent(self, row: Row, now: float | None = None) -> None:
        with self._lock, store.transaction(self.db):
            self.db.execute("UPDATE outbox SET sent = $1, error = '' WHERE id = $2",
                            (time.time() if now is None else now, row.id))

    def failed(self, row: Row, error: str, now: float | None = None) -> float:
        """Tried again after a backoff that doubles up to retry_max_seconds; when."""
        now = time.time() if now is None else now
        wait = min(self.settings.retry_max_seconds, FIRST_RETRY_SECONDS * 2.0 ** row.attempts)
        with self._lock, store.transaction(self.db):
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, due = $1, error = $2 "
                            "WHERE id = $3", (now + wait, error[:500], row.id))
        return now + wait

    def backlog(self) -> list[Backlog]:
        with self._lock:
            found = {c: Backlog(c, n, oldest) for c, n, oldest in self.db.execute(
                "SELECT channel, COUNT(*), MIN(created) FROM outbox WHERE sent IS NULL "
                "GROUP BY channel")}
        return [found.get(c, Backlog(c, 0, None)) for c in self.settings.channels] + [
            b for c, b in found.items() if c not in self.settings.channels]

    def history(self, user: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        with self._lock:
            cursor = self.db.execute(
                'SELECT event, channel, "user", subject, created, sent, attempts, error '
                'FROM outbox WHERE "user" = $1 OR $1 IS NULL ORDER BY id DESC LIMIT $2',
                (user, limit))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()][::-1]

    def close(self) -> None:
        self.db.close()
