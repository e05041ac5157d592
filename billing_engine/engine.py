"""The billing engine: bills each settled window once, in order, from counter differences.

At a window's end T one instant query reads every usage counter (and, for series new or
fallen, its `_created` time). Each series is billed `value - cursor`, and its cursor moves to
`value`. A value below the cursor is a reset (billed: `value`) only when the counter began
again (a later `_created`); with the same beginning it was read from a Prometheus replica that
lags the one the cursor came from, and waits until the replicas agree again. A series never
seen before is billed in full if it was created after billing began, else only baselined. A
node or Prometheus that was away simply shows a larger difference in the first window that
sees it again: late, never lost, never twice. Money is Decimal throughout.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from billing_engine.accounts import AccountPlans
from billing_engine.influx import InfluxSink, InfluxUnavailable, LineFormatter
from billing_engine.job_tracker import JobTracker
from billing_engine.pricing import PriceBook
from billing_engine.series import LineKey, Series, SeriesCache
from gpuacct.allocation import RESERVATION_JOB_PREFIX
from gpuacct.config import BillingSettings
from gpuacct.lease import Lease
from gpuacct.money import merge_versions
from gpuacct.periods import DAY, iso
from gpuacct.promql import PrometheusUnavailable, Querier
from ledger import (
    AccountPlan,
    LeaseLost,
    LedgerWriter,
    UsageLine,
    WindowBill,
)

log = logging.getLogger(__name__)


def usage_query(suffix: str, unattributed: bool = False) -> str:
    """Every usage counter's `_total` or `_created` series; with `unattributed`, also the GPU
    time nobody was found for (billed where billing.unattributed_account is set)."""
    names = f"gpuacct_job_(gpu|gpu_idle|cpu)_seconds_{suffix}"
    if unattributed:
        names += f"|gpuacct_unattributed_gpu_seconds_{suffix}"
    return '{__name__=~"' + names + '"}'


QUERY = usage_query("total")
OUTBOX_BATCH = 5000
_UNKNOWN = -1  # no window ends here: the cursor cache must be read from the ledger
CONFIG_ACTOR = "config (billing.accounts)"


F = TypeVar("F", bound=Callable[..., Any])


def without_cyclic_gc(method: F) -> F:
    """Pause the cyclic garbage collector for the call. A window allocates some 200,000
    objects, all freed by reference counting; triggered by allocation counts, the collector
    would walk the whole heap (the cursors included) over and over, for nothing (its share
    of a window is in docs/benchmarks.md)."""
    @functools.wraps(method)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return method(*args, **kwargs)
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            gc.enable()
    return paused  # type: ignore[return-value]


def _restarted(began: float | None, begins: Decimal | None) -> bool:
    """Whether a counter read below its cursor began again since the cursor was taken: its
    cursor's `_created` (`began`; None or 0: not known) against the one read now."""
    if not began:
        return True  # nothing tells a lagging replica from a reset: a drop is a reset
    return begins is not None and abs(float(begins) - began) > 1e-3


def _lines(gpu: dict[LineKey, Decimal], cpu: dict[LineKey, Decimal],
           idle: dict[LineKey, Decimal]) -> list[tuple[LineKey, Decimal, Decimal, Decimal]]:
    """(user, job, node, gpu_model), GPU-seconds, CPU core-seconds, idle-held GPU-seconds: a
    line per key, in order. A job's CPU time goes on the line of the GPU model it used most in
    the window (its cost does not depend on which), or on a line of its own, with no model, if
    it used no GPU. Idle seconds go on their GPU's line (a streak's first idle seconds are
    counted when it has lasted long enough, so a window may see them without GPU seconds)."""
    lines = {key: [seconds, Decimal(0), Decimal(0)] for key, seconds in gpu.items()}
    for key, seconds in idle.items():
        lines.setdefault(key, [Decimal(0), Decimal(0), Decimal(0)])[2] += seconds
    by_job: dict[LineKey, LineKey] = {}
    for key, seconds in gpu.items():
        best = by_job.get(key[:3])
        if best is None or seconds > gpu[best] or (seconds == gpu[best] and key < best):
            by_job[key[:3]] = key
    for job, seconds in cpu.items():
        lines.setdefault(by_job.get(job, (*job, "")), [Decimal(0)] * 3)[1] += seconds
    return sorted((key, g, c, i) for key, (g, c, i) in lines.items())


class Engine:
    def __init__(self, settings: BillingSettings, ledger: LedgerWriter, prometheus: Querier,
                 sink: InfluxSink | None, holder: str | None = None,
                 jobs: JobTracker | None = None) -> None:
        self.settings = settings
        self.jobs = jobs
        self.ledger = ledger
        self.prometheus = prometheus
        self.sink = sink
        self.prices = PriceBook(settings.prices, settings.reserved_price_factor)
        self.lease = Lease(ledger, holder or
                           f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                           settings.lease_seconds, log)
        self.last_tick_seconds = 0.0
        self.last_tick_ok = True
        self.influx_ok = True
        self.series_behind = 0  # series read below their cursor from a lagging replica
        self.formatter = LineFormatter()
        self.series = SeriesCache(frozenset(settings.replica_labels),
                                  unattributed_account=settings.unattributed_account)
        unattributed = settings.unattributed_account is not None
        self.query = usage_query("total", unattributed)
        self.created_query = usage_query("created", unattributed)
        # The cursors as of the window `_cursors_after` (None: none billed yet), kept between
        # windows rather than read back each minute; only a window's commit changes them.
        self._cursors: dict[str, Decimal] = {}
        self._births: dict[str, float] = {}  # when each cursor's counter began
        self._cursors_after: int | None = _UNKNOWN
        self._unsent: tuple[int, list[UsageLine]] = (_UNKNOWN, [])  # the last window's lines
        self.plans = AccountPlans(settings)
        self._synced: list[AccountPlan] | None = None
        self._next_roll_up = 0.0

    def due_window(self, now: float) -> int:
        """The end of the latest window that has settled by `now`."""
        w = self.settings.window_seconds
        return int((now - self.settings.settle_seconds) // w * w)

    def tick(self, now: float | None = None) -> int:
        """Bill every settled window not yet billed, then drain the outbox; windows billed."""
        started = time.perf_counter()
        now = time.time() if now is None else now
        try:
            if not self.lease.take():
                return 0
            self._sync_accounts(now)
            self.prices = PriceBook(merge_versions(
                self.settings.prices, [v for v, _, _ in self.ledger.price_versions()]),
                self.settings.reserved_price_factor)
            billed = self._bill_due(now)
            self.drain_outbox()
            self._roll_up(now)
            if self.jobs is not None:  # the nodes' jobs, as of the same settled moment
                self.jobs.track(self.due_window(now))
            self.last_tick_ok = True
            return billed
        except Exception:
            self.last_tick_ok = False
            raise
        finally:
            self.last_tick_seconds = time.perf_counter() - started

    def _roll_up(self, now: float) -> None:
        """A day of old usage lines rolled up per tick, until none is due; then hourly."""
        days = self.settings.usage_line_days
        if days is None or now < self._next_roll_up:
            return
        day = self.ledger.roll_up_day(int((now - days * DAY) // DAY * DAY))
        if day is None:
            self._next_roll_up = now + 3600
        else:
            log.info("usage lines of %s rolled up into one a day per user, job, node and model",
                     iso(day)[:10])

    def _sync_accounts(self, now: float) -> None:
        """The config's group accounts into the ledger, whenever they (or a Unix group's
        members) change; the changes count from the start of the first window not yet billed
        (windows are charged by the membership at their start: a member synced mid-window
        would otherwise pay that window from an account of their own)."""
        plans = self.plans()
        if plans != self._synced:
            unbilled = (self.ledger.last_window() or self.ledger.billing_start()
                        or self.due_window(now))
            changed = self.ledger.sync_accounts(plans, min(now, unbilled), CONFIG_ACTOR)
            if changed:
                log.info("billing.accounts: %d change(s) to accounts, members and limits", changed)
            self._synced = plans

    def _bill_due(self, now: float) -> int:
        w = self.settings.window_seconds
        start = self.ledger.billing_start()
        if start is None:
            self._begin(self.due_window(now))
            return 0
        due = self.due_window(now)
        first = (self.ledger.last_window() or start) + w
        oldest = due - int(self.settings.max_backfill_seconds // w) * w
        if first < oldest:
            log.warning("billing was away since %s: windows before %s are not billed one by one; "
                        "their usage is billed in the window ending %s", iso(first - w),
                        iso(oldest), iso(oldest))
            first = oldest
        windows = range(first, due + 1, w)
        previous = self.ledger.last_window() or start
        for n, end in enumerate(windows, 1):
            self.bill_window(end, previous)
            previous = end
            if len(windows) > 1 and (n % 60 == 0 or n == len(windows)):
                log.info("caught up %d of %d windows (to %s)", n, len(windows), iso(end))
            if not self.lease.take():
                raise LeaseLost("the billing lease went to another engine")
        return len(windows)

    def _begin(self, t0: int) -> None:
        """First run: what the counters hold at t0 predates gpuacct and is not billed."""
        totals = self._read(self.query, t0)
        births = {key: float(born) for key, born in self._read(self.created_query, t0).items()
                  if key in totals}
        if not self.ledger.begin_billing(t0, totals, births):
            return
        log.info("billing begins at %s with %d series baselined", iso(t0), len(totals))

    def _counters(self, query: str, at: int) -> list[tuple[Series, Decimal]]:
        """Every series the query finds at `at`, with its value. A value that no counter can
        hold (NaN, infinite, negative) is left out, its cursor kept, and said once a window:
        one odd series must not stop billing for everyone."""
        counters, odd, replicated = [], [], False
        for s in self.prometheus.instant(query, at):
            if s.value.is_finite() and not s.value.is_signed():
                series = self.series(s.labels)
                counters.append((series, s.value))
                replicated = replicated or series.replicated
            else:
                odd.append(s)
        if odd:
            log.warning("%d series at %s are not billed: their value is not a finite, "
                        "non-negative number (first: %s = %s)", len(odd), iso(at),
                        odd[0].labels, odd[0].value)
        if replicated:  # one series read through several replicas: the furthest reading
            furthest: dict[str, tuple[Series, Decimal]] = {}
            for series, value in counters:
                if series.key not in furthest or value > furthest[series.key][1]:
                    furthest[series.key] = (series, value)
            counters = list(furthest.values())
        return counters

    def _read(self, query: str, at: int) -> dict[str, Decimal]:
        return {series.key: value for series, value in self._counters(query, at)}

    def _cursor_cache(self) -> tuple[dict[str, Decimal], dict[str, float], int | None]:
        last = self.ledger.last_window()
        if self._cursors_after != last:
            self._cursors, self._cursors_after = self.ledger.cursors(), last
            self._births = self.ledger.cursor_births()
        return self._cursors, self._births, last

    @without_cyclic_gc
    def bill_window(self, end: int, previous: int) -> None:
        """Bill the usage that the counters gained between the window `previous` and `end`."""
        start = Decimal(self.ledger.billing_start() or end)
        totals = self._counters(self.query, end)
        cursors, births, after = self._cursor_cache()
        # When series began: for new ones, ones whose beginning is not known yet, and ones
        # read below their cursor. In steady state there are none.
        known = births.keys()
        created = (self._read(self.created_query, end) if any(
            series.key not in known or value < cursors[series.key]
            for series, value in totals) else {})

        usage: dict[str, dict[LineKey, Decimal]] = {
            "gpu": defaultdict(Decimal), "cpu": defaultdict(Decimal), "idle": defaultdict(Decimal)}
        moved: dict[str, Decimal] = {}
        began: dict[str, float] = {}
        behind = 0
        for series, value in totals:
            key = series.key
            cursor = cursors.get(key)
            if cursor is None:
                born = created.get(key)
                delta = value if born is not None and born >= start else Decimal(0)
            elif value >= cursor:
                delta = value - cursor
            elif _restarted(births.get(key), created.get(key)):
                delta = value  # the counter was reset
                began[key] = float(created.get(key, 0))
            else:  # read from a replica behind the cursor's: billed when it catches up
                behind += 1
                continue
            if key not in births:
                began[key] = float(created.get(key, 0))
            if value != cursor:
                moved[key] = value
            if delta:
                usage[series.family][series.line] += delta
        version = self.prices.version_at(previous)  # the price in force at the window's start
        cost = self.prices.coster(version)
        lines = []
        for (user, job, node, model), gpu, cpu, idle in _lines(
                usage["gpu"], usage["cpu"], usage["idle"]):
            reserved = job.startswith(RESERVATION_JOB_PREFIX)
            lines.append(UsageLine(user, job, node, model, gpu, cpu,
                                   cost(model, gpu, cpu, reserved), idle,
                                   cost(model, idle, Decimal(0), reserved) if idle else idle))
        bill = WindowBill(end=end, previous=previous, expected_last=after, lines=lines,
                          cursors=moved, price_effective=self.prices.starts[version],
                          holder=self.lease.holder, opening_balance=self.settings.opening_balance,
                          trial_mode=self.settings.trial_mode,
                          reason=f"usage in the window ending {iso(end)}",
                          unknown_users=self.settings.unknown_users, births=began)
        if self.ledger.commit_window(bill):
            cursors.update(moved)
            births.update(began)
            self.series_behind += behind
            self._cursors_after = end
            self._unsent = (end, lines)
        else:  # billed meanwhile (never twice); the cursors read are stale
            self._cursors_after = _UNKNOWN

    @without_cyclic_gc
    def drain_outbox(self) -> None:
        """Send each window's points, oldest first; a window leaves the outbox once InfluxDB
        has acknowledged all of them (a point sent twice overwrites itself)."""
        if self.sink is None:
            return
        for end in self.ledger.outbox_windows():
            unsent_end, unsent = self._unsent
            lines = unsent if unsent_end == end else self.ledger.window_lines(end)
            points = [self.formatter.line(line, end) for line in lines]
            try:
                for first in range(0, len(points), OUTBOX_BATCH):
                    self.sink.write(points[first:first + OUTBOX_BATCH])
            except InfluxUnavailable as exc:
                if self.influx_ok:
                    log.warning("%s; %d points wait in the outbox", exc,
                                self.ledger.outbox_backlog())
                self.influx_ok = False
                return
            self.ledger.outbox_done(end)
            if not self.influx_ok:
                log.info("InfluxDB is back; outbox drained to %d", self.ledger.outbox_backlog())
            self.influx_ok = True

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; a failure is logged once per outage and retried."""
        poll = max(0.2, min(5.0, self.settings.window_seconds / 4))
        failing = ""
        while not stop.is_set():
            try:
                self.tick()
                if failing:
                    log.info("billing resumed")
                failing = ""
            except (PrometheusUnavailable, LeaseLost) as exc:
                if str(exc) != failing:
                    log.warning("cannot bill now: %s", exc)
                failing = str(exc)
            except Exception:
                log.exception("billing tick failed")
                failing = "error"
            stop.wait(poll)
        self.lease.release()
