"""Sends the notices' outbox (enforcer.notices) through Apprise, one channel URL per row.

A failure (the SMTP server down, a webhook answering 500) leaves the row for a retry after a
backoff, and is counted; nothing is dropped. The backlog and its oldest row's age are metrics,
which the operations rules alert on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import apprise
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from enforcer.notices import Notices, Row
from gpuacct.config import NotificationSettings

log = logging.getLogger(__name__)


def channel_url(template: str, user: str, address: str | None) -> str:
    return template.replace("{user}", quote(user, safe="")).replace(
        "{address}", quote(address or "", safe="@"))


class Notifier:
    def __init__(self, notices: Notices, settings: NotificationSettings,
                 registry: CollectorRegistry) -> None:
        self.notices, self.settings = notices, settings
        self.sent = Counter("gpuacct_notices_sent", "Notices delivered, per channel.",
                            ["channel"], registry=registry)
        self.failures = Counter("gpuacct_notice_failures", "Failed attempts to deliver a "
                                "notice (each is retried), per channel.", ["channel"],
                                registry=registry)
        for channel in settings.channels:
            self.sent.labels(channel)
            self.failures.labels(channel)
        registry.register(_BacklogCollector(notices))
        self._wake = threading.Event()

    def wake(self) -> None:
        """Something was queued: send it now rather than at the next check."""
        self._wake.set()

    def send_due(self, now: float | None = None) -> int:
        """Every row due now, tried once; the number delivered."""
        delivered = 0
        for row in self.notices.due(now):
            error = self._deliver(row)
            if error is None:
                self.notices.sent(row)
                self.sent.labels(row.channel).inc()
                delivered += 1
            else:
                retry = self.notices.failed(row, error)
                self.failures.labels(row.channel).inc()
                log.warning("notice %s to %s on %s not delivered (%s); retried at %s",
                            row.event, row.user, row.channel, error,
                            time.strftime("%H:%M:%S", time.localtime(retry)))
        return delivered

    def _deliver(self, row: Row) -> str | None:
        spec = self.settings.channels.get(row.channel)
        if spec is None:
            return f"the channel {row.channel} is no longer configured"
        template = spec.url.get_secret_value()
        if "{address}" in template and not row.address:
            return f"{row.user} has no address for {row.channel}"
        sender = apprise.Apprise()
        if not sender.add(channel_url(template, row.user, row.address)):
            return f"notifications.channels.{row.channel}.url is not an Apprise URL"
        with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
            ok = sender.notify(title=row.subject, body=row.body,
                               body_format=apprise.NotifyFormat.TEXT)
        if ok:
            return None
        lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines()]
        return lines[-1] if lines else "delivery failed"

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.send_due()
            except Exception:  # the next check tries again; the service goes on
                log.exception("sending notices failed")
            self._wake.wait(self.settings.check_interval_seconds)
            self._wake.clear()

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self.run, args=(stop,), name="notifier", daemon=True).start()


class _BacklogCollector(Collector):
    def __init__(self, notices: Notices) -> None:
        self.notices = notices

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily("gpuacct_notice_backlog", "Notices not yet delivered, per "
                                    "channel.", labels=["channel"])
        oldest = GaugeMetricFamily("gpuacct_notice_oldest_pending_seconds", "Age of the oldest "
                                   "notice not yet delivered, per channel (0: none).",
                                   labels=["channel"])
        now = time.time()
        for b in self.notices.backlog():
            pending.add_metric([b.channel], b.pending)
            oldest.add_metric([b.channel], now - b.oldest if b.oldest is not None else 0.0)
        yield pending
        yield oldest
