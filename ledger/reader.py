"""Every read of the ledger, on read-only connections (one per thread): the web, /metrics and
the CLIs use this, and a write through it fails.

Sums of money are exact: each cost has at most six decimals, so it is summed as an integer
number of micro-units and turned back into a Decimal here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

from gpuacct import store
from gpuacct.config import PriceVersion
from gpuacct.periods import DAY, iso, month_start, next_month, week_start
from ledger import schema
from ledger.protocols import Export
from ledger.records import (
    BILLING,
    Account,
    AuditEntry,
    DailyCost,
    JobUsage,
    LedgerUnavailable,
    MemberMonth,
    MetricsSnapshot,
    Statement,
    StatementEntry,
    Transaction,
    UsageLine,
    WeekUsage,
)

MICROS = "CAST(ROUND(CAST({} AS DOUBLE PRECISION) * 1000000) AS BIGINT)"


MICRO = Decimal(1).scaleb(-6)  # every amount a statement shows has six decimals


def money(micros: int | None) -> Decimal:
    return Decimal(micros or 0).scaleb(-6)


class ReadOnlyLedger:
    """Implements `LedgerReader` on a ledger (a SQLite file or a PostgreSQL schema) that
    gpuacct-billing keeps migrated."""

    def __init__(self, path: store.Target) -> None:
        self.path = path
        self.where = store.redacted(str(path))  # for messages
        self._readers = store.PerThread(self._open_reader)

    def _open_reader(self) -> store.Database:
        db = store.connect(self.path, readonly=True, timeout=5.0, schema="ledger")
        store.require_version(db, schema.VERSION, f"ledger {self.where}")
        return db

    def _db(self) -> store.Database:
        return self._readers.get()

    def close(self) -> None:
        self._readers.close()

    def _meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = $1", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- billing state
    def version(self) -> tuple[object, ...]:
        return tuple(self._db().execute(
            "SELECT (SELECT MAX(window_end) FROM windows), (SELECT MAX(id) FROM transactions), "
            "(SELECT MAX(id) FROM audit)"
        ).fetchone())

    def billing_start(self) -> int | None:
        start = self._meta("billing_start")
        return None if start is None else int(start)

    def last_window(self) -> int | None:
        row = self._db().execute("SELECT MAX(window_end) FROM windows").fetchone()
        return None if row[0] is None else int(row[0])

    def cursors(self) -> dict[str, Decimal]:
        return {series: Decimal(value)
                for series, value in self._db().execute("SELECT series, value FROM cursors")}

    def cursor_births(self) -> dict[str, float]:
        return dict(self._db().execute(
            "SELECT series, created FROM cursors WHERE created IS NOT NULL").fetchall())

    def window_lines(self, end: int) -> list[UsageLine]:
        return [UsageLine(user, job, node, model, Decimal(gpu), Decimal(cpu), Decimal(cost),
                          Decimal(idle), Decimal(idle_cost))
                for user, job, node, model, gpu, cpu, cost, idle, idle_cost in self._db().execute(
                    'SELECT "user", job, node, gpu_model, gpu_seconds, cpu_core_seconds, cost, '
                    "gpu_idle_seconds, idle_cost FROM usage_lines WHERE window_end = $1", (end,))]

    def outbox_windows(self) -> list[int]:
        """Windows whose points InfluxDB has not acknowledged, oldest first."""
        return [int(end) for (end,) in self._db().execute(
            "SELECT window_end FROM influx_outbox ORDER BY window_end")]

    def outbox_backlog(self) -> int:
        """Points waiting for InfluxDB."""
        return int(self._db().execute("SELECT COALESCE(SUM(lines), 0) FROM influx_outbox "
                                      "JOIN windows USING (window_end)").fetchone()[0])

    # -- accounts and money
    def balance(self, account: str) -> Decimal | None:
        row = self._db().execute("SELECT balance FROM accounts WHERE name = $1",
                                 (account,)).fetchone()
        return None if row is None else Decimal(row[0])

    def balances(self) -> dict[str, Decimal]:
        return {name: Decimal(b) for name, b in self._db().execute(
            "SELECT name, balance FROM accounts ORDER BY name")}

    def _account_rows(self, where: str = "", args: tuple[object, ...] = (),
                      cost: dict[str, int] | None = None) -> list[Account]:
        return [Account(name=name, kind=kind, owner=owner, status=status,
                        balance=Decimal(balance), charged=Decimal(charged), opened_at=opened,
                        cost_since=money((cost or {}).get(name)))
                for name, kind, owner, status, balance, charged, opened in self._db().execute(
                    "SELECT name, kind, owner, status, balance, charged, opened_at FROM accounts "
                    f"{where} ORDER BY name", args)]

    def accounts(self, cost_since: float) -> list[Account]:
        cost = dict(self._db().execute(
            f"SELECT account, SUM({MICROS.format('cost')}) FROM usage_lines "
            "WHERE window_end >= $1 GROUP BY account", (cost_since,)).fetchall())
        return self._account_rows(cost=cost)

    def account(self, name: str) -> Account | None:
        found = self._account_rows("WHERE name = $1", (name,))
        return found[0] if found else None

    def hourly_costs(self, since: int) -> list[tuple[str, int, Decimal]]:
        """(account, hour start, what its usage cost in windows ending that hour) since
        `since`: fair share's usage, decayed by the allocator."""
        return [(str(account), int(hour), money(micros)) for account, hour, micros in
                self._db().execute(
                    f"SELECT account, window_end / 3600 * 3600, SUM({MICROS.format('cost')}) "
                    "FROM usage_lines WHERE window_end >= $1 GROUP BY 1, 2", (since,))]

    def charged_to(self, at: float) -> dict[str, str]:
        """user -> the account their usage goes to at `at` (users known to the ledger)."""
        found = {name: name for (name,) in self._db().execute(
            "SELECT name FROM accounts WHERE kind = 'personal'")}
        for user, account in self._db().execute(
                'SELECT "user", account FROM memberships m WHERE effective = '
                '(SELECT MAX(effective) FROM memberships WHERE "user" = m."user" '
                "AND effective <= $1)", (at,)):
            if account:  # "": left every group, back to their own account if they have one
                found[user] = account
        return found

    def members(self, account: str, at: float) -> list[str]:
        return sorted(u for u, a in self.charged_to(at).items() if a == account)

    def member_months(self, month: int, account: str | None = None) -> list[MemberMonth]:
        """Each member's spending in the month starting at `month`, with their limit: every
        member with a limit or some usage."""
        db = self._db()
        limits = {(a, u): Decimal(m) for a, u, m in db.execute(
            'SELECT account, "user", monthly FROM member_limits')}
        costs = {(a, u): Decimal(c) for a, u, c in db.execute(
            'SELECT account, "user", cost FROM monthly_usage WHERE month_start = $1', (month,))}
        return [MemberMonth(a, u, costs.get((a, u), Decimal(0)), limits.get((a, u)))
                for a, u in sorted(limits.keys() | costs.keys())
                if account is None or a == account]

    def audit_entries(self, since: float, limit: int = 1000) -> list[AuditEntry]:
        """Who did what, newest first."""
        return [AuditEntry(id=i, at=at, actor=actor, action=action, target=target,
                           detail=detail)
                for i, at, actor, action, target, detail in self._db().execute(
                    "SELECT id, at, actor, action, target, detail FROM audit WHERE at >= $1 "
                    "ORDER BY id DESC LIMIT $2", (since, limit))]

    def transactions(self, account: str, page: int, size: int
                     ) -> tuple[list[Transaction], int]:
        db = self._db()
        total = db.execute("SELECT COUNT(*) FROM transactions WHERE account = $1",
                           (account,)).fetchone()[0]
        rows = db.execute(
            "SELECT id, at, kind, amount, balance_after, reason, actor FROM transactions "
            "WHERE account = $1 ORDER BY id DESC LIMIT $2 OFFSET $3", (account, size, page * size))
        return [Transaction(id=i, at=at, kind=kind, amount=Decimal(a),
                            balance_after=Decimal(b), reason=reason, actor=actor)
                for i, at, kind, a, b, reason, actor in rows], total

    def postings(self, account: str, limit: int = 50) -> list[Transaction]:
        """The account's money in and out other than usage charges, newest first."""
        return [Transaction(id=i, at=at, kind=kind, amount=Decimal(a), balance_after=Decimal(b),
                            reason=reason, actor=actor)
                for i, at, kind, a, b, reason, actor in self._db().execute(
                    "SELECT id, at, kind, amount, balance_after, reason, actor FROM transactions "
                    "WHERE account = $1 AND kind != 'charge' ORDER BY id DESC LIMIT $2",
                    (account, limit))]

    def daily_charges(self, account: str, since: int) -> dict[int, Decimal]:
        """Day start (UTC) -> the account's usage charges of windows ending that day."""
        return {int(day): -money(micros) for day, micros in self._db().execute(
            f"SELECT window_end / {DAY} * {DAY}, SUM({MICROS.format('amount')}) FROM "
            "transactions WHERE account = $1 AND kind = 'charge' AND window_end >= $2 GROUP BY 1",
            (account, since))}

    def statement(self, account: str, month: int) -> Statement | None:
        """The account's month from `month` (a month's start, UTC); None: no such account.
        A posting counts when it happened, a charge in the month its window ends in."""
        found = self.account(account)
        if found is None:
            return None
        end = next_month(month)
        db = self._db()
        when = "COALESCE(window_end, at)"
        with store.read_transaction(db):
            opening = db.execute(
                f"SELECT SUM({MICROS.format('amount')}) FROM transactions "
                f"WHERE account = $1 AND {when} < $2", (account, month)).fetchone()[0]
            entries = [StatementEntry(float(day), "charges", -charged, "usage", BILLING)
                       for day, charged in self.daily_charges(account, month).items()
                       if day < end]
            entries += [StatementEntry(at, kind, Decimal(amount).quantize(MICRO), reason, actor)
                        for at, kind, amount, reason, actor in db.execute(
                            "SELECT at, kind, amount, reason, actor FROM transactions "
                            f"WHERE account = $1 AND kind != 'charge' AND {when} >= $2 AND "
                            f"{when} < $3", (account, month, end))]
            members = [(m.user, m.cost) for m in self.member_months(month, account) if m.cost]
        return Statement(found, month, end, money(opening), sorted(entries, key=lambda e: e.at),
                         members)

    def usage_by_job(self, user: str, since: float, until: float = 1e12) -> list[JobUsage]:
        rows = self._db().execute(
            "SELECT job, node, gpu_model, SUM(CAST(gpu_seconds AS DOUBLE PRECISION)), "
            f"SUM(CAST(cpu_core_seconds AS DOUBLE PRECISION)), SUM({MICROS.format('cost')}) "
            'FROM usage_lines WHERE "user" = $1 AND window_end >= $2 AND window_end < $3 '
            "GROUP BY job, node, gpu_model ORDER BY 6 DESC LIMIT 200", (user, since, until))
        return [JobUsage(job, node, model, gpu / 3600, cpu / 3600, money(cost))
                for job, node, model, gpu, cpu, cost in rows]

    def daily_cost(self, user: str, since: int) -> list[DailyCost]:
        """Cost per UTC day and GPU model of windows ending at `since` or later."""
        return [DailyCost(int(day), model, money(micros)) for day, model, micros in
                self._db().execute(
                    f"SELECT window_end / {DAY} * {DAY}, gpu_model, "
                    f"SUM({MICROS.format('cost')}) FROM usage_lines "
                    'WHERE "user" = $1 AND window_end >= $2 GROUP BY 1, 2', (user, since))]

    def weekly_usage(self, start: float, end: float, user: str | None = None
                     ) -> list[WeekUsage]:
        """Each user's weeks that begin in [start, end), by week then user."""
        rows = self._db().execute(
            'SELECT week_start, "user", gpu_seconds, gpu_idle_seconds, cost, idle_cost '
            "FROM weekly_usage WHERE week_start >= $1 AND week_start < $2 "
            'AND ("user" = $3 OR $3 IS NULL) ORDER BY week_start, "user"', (start, end, user))
        return [WeekUsage(int(week), name, *map(Decimal, numbers))
                for week, name, *numbers in rows]

    def export_rows(self, what: Export, start: float, end: float) -> Iterator[list[str]]:
        """Usage lines of windows ending in [start, end), or transactions made in it."""
        if what == "usage":
            found = self._db().execute(
                'SELECT COALESCE(u.covers_from, w.window_start), u.window_end, u."user", u.job, '
                "u.node, u.gpu_model, u.gpu_seconds, u.cpu_core_seconds, u.cost, "
                "u.gpu_idle_seconds, u.idle_cost, u.account "
                "FROM usage_lines u JOIN windows w USING (window_end) "
                "WHERE u.window_end >= $1 AND u.window_end < $2 "
                'ORDER BY u.window_end, u."user", u.job, u.node, u.gpu_model', (start, end))
            return ([iso(r[0]), iso(r[1]), *r[2:]] for r in found)
        if what == "waste":
            return ([iso(w.week_start), w.user, str(w.gpu_seconds), str(w.gpu_idle_seconds),
                     f"{w.idle_share:.4f}", str(w.cost), str(w.idle_cost),
                     f"{w.idle_cost_share:.4f}"]
                    for w in self.weekly_usage(week_start(start), end))
        found = self._db().execute(
            "SELECT id, at, account, kind, amount, balance_after, reason, window_end, actor "
            "FROM transactions WHERE at >= $1 AND at < $2 ORDER BY id", (start, end))
        return ([str(r[0]), iso(r[1]), *r[2:7], iso(r[7]) if r[7] is not None else "", r[8]]
                for r in found)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """LedgerUnavailable (or SchemaError) when the ledger cannot be read now."""
        try:
            return self._metrics_snapshot()
        except store.StoreError as exc:
            raise LedgerUnavailable(f"ledger {self.where}: {exc}") from None

    def _metrics_snapshot(self) -> MetricsSnapshot:
        db = self._db()
        with store.read_transaction(db):  # one consistent view of the numbers
            now = time.time()
            accounts = self._account_rows()
            charged_to = self.charged_to(now)
            members = self.member_months(month_start(now))
            last, windows = db.execute("SELECT MAX(window_end), COUNT(*) FROM windows"
                                       ).fetchone()
            charged = self._meta("charged_total")
            backlog = self.outbox_backlog()
        return MetricsSnapshot(accounts, charged_to, members, None if last is None else int(last),
                               backlog, Decimal(charged or 0), int(windows))

    def price_versions(self) -> list[tuple[PriceVersion, float, str]]:
        """(version, created_at, reason) of every version added here, oldest first."""
        return [(PriceVersion.model_validate_json(text), created, reason)
                for text, created, reason in self._db().execute(
                    "SELECT version, created_at, reason FROM price_versions ORDER BY effective")]

    def invariant_violations(self) -> list[str]:
        """Accounts whose balance is not the sum of their transactions (should be none)."""
        # One statement, so one snapshot: read in two, an engine's commit between them made
        # a sound ledger look broken (seen on PostgreSQL with an engine billing meanwhile).
        sums: dict[str, Decimal] = {}
        balances: dict[str, Decimal] = {}
        for kind, name, amount in self._db().execute(
                "SELECT 'b', name, balance FROM accounts UNION ALL "
                "SELECT 't', account, amount FROM transactions"):
            if kind == "b":
                balances[name] = Decimal(amount)
            else:
                sums[name] = sums.get(name, Decimal(0)) + Decimal(amount)
        return [f"{name}: balance {balance} but transactions sum to {sums.get(name)}"
                for name, balance in sorted(balances.items()) if sums.get(name) != balance]
