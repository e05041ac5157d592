"""Benchmark: what notices add to the enforcer's webhook, and how fast the outbox drains.

1. The webhook. 2,000 users with firing enforcement alerts (the balance's tiers, as after a
   price change puts a whole lab below warning); each delivery brings one new alert. Timed:
   the enforcer store taking the delivery (enforcer.store.Store.receive), with and without
   working out which notices started (enforcer.notices.Notices.alerts_changed over every
   firing alert, writing the outbox rows of the new one). Peer in the same run: the store
   alone, as before notices existed.
2. Draining. 1,000 events, one per user, to a real SMTP server (aiosmtpd, on loopback)
   through Apprise, one connection per message as Apprise makes it. Peer in the same run:
   the same 1,000 messages sent by smtplib over one kept connection (the floor of what SMTP
   costs here).
Run: .venv/bin/python bench/notices_bench.py
"""

from __future__ import annotations

import smtplib
import statistics
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry

from enforcer.notices import Notices
from enforcer.notifier import Notifier
from enforcer.payload import Notification
from enforcer.store import Store
from gpuacct.config import NotificationSettings
from stack.process import free_port

USERS = 2_000
DELIVERIES = 50
EVENTS = 1_000


def alert(user: str, name: str, starts: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    return {"status": "firing", "startsAt": starts, "fingerprint": f"{hash((user, name)):x}",
            "labels": {"alertname": name, "user": user, "action": "notify"},
            "annotations": {"summary": f"{user}'s balance is low",
                            "description": f"{user}'s account has 12.5 left"}}


def delivery(*alerts: dict[str, Any]) -> Notification:
    return Notification.model_validate({"version": "4", "status": "firing",
                                        "alerts": list(alerts)})


def webhook(folder: Path, with_notices: bool) -> list[float]:
    store = Store(folder / f"enforcer-{with_notices}.sqlite3")
    notices = Notices(folder / f"notices-{with_notices}.sqlite3", NotificationSettings(
        channels={"email": {"url": "mailto://127.0.0.1:25?to={address}",
                            "address": "{user}@example.org"}}), "http://gpuacct")
    for start in range(0, USERS, 500):  # the lab below warning, told once
        store.receive(delivery(*[alert(f"user{u:05d}", "GpuacctBalanceLow")
                                 for u in range(start, start + 500)]))
    if with_notices:
        notices.alerts_changed(store.firing())
    took = []
    for i in range(DELIVERIES):
        started = time.perf_counter()
        store.receive(delivery(alert(f"user{i:05d}", "GpuacctBalanceLimitedBlockGpu")))
        if with_notices:  # as the webhook does: the delivery's users
            users = {f"user{i:05d}"}
            notices.alerts_changed(store.firing(users), users)
        took.append(time.perf_counter() - started)
    store.close()
    notices.close()
    return took


class Sink:
    received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        Sink.received += 1
        return "250 OK"


def drain(folder: Path, port: int) -> float:
    settings = NotificationSettings(channels={"email": {
        "url": f"mailto://127.0.0.1:{port}?from=gpuacct@example.org&to={{address}}",
        "address": "{user}@example.org"}}, per_user_per_hour=100)
    notices = Notices(folder / "drain.sqlite3", settings, "http://gpuacct")
    for u in range(EVENTS):
        notices.told(f"recharge:{u}", f"user{u:05d}", "recharged", "50 was added")
    notifier = Notifier(notices, settings, CollectorRegistry())
    started = time.perf_counter()
    while notifier.send_due():
        pass
    took = time.perf_counter() - started
    assert notices.backlog()[0].pending == 0
    notices.close()
    return took


def smtplib_floor(port: int) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for u in range(EVENTS):
            message = EmailMessage()
            message["From"], message["To"] = "gpuacct@example.org", f"user{u:05d}@example.org"
            message["Subject"] = "recharged"
            message.set_content("50 was added")
            smtp.send_message(message)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        alone, told = webhook(folder, False), webhook(folder, True)
        median_alone, median_told = statistics.median(alone), statistics.median(told)
        print(f"webhook, {USERS} users firing, one new alert a delivery ({DELIVERIES} "
              f"deliveries): store alone median {median_alone * 1000:.2f} ms, with notices "
              f"{median_told * 1000:.2f} ms, ratio {median_told / median_alone:.2f}")
        port = free_port()
        controller = Controller(Sink(), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            apprise_seconds = drain(folder, port)
            floor = smtplib_floor(port)
        finally:
            controller.stop()
        print(f"draining {EVENTS} e-mails to aiosmtpd: Apprise {apprise_seconds:.2f} s "
              f"({EVENTS / apprise_seconds:.0f}/s), smtplib on one connection {floor:.2f} s "
              f"({EVENTS / floor:.0f}/s), ratio {apprise_seconds / floor:.2f}")


if __name__ == "__main__":
    main()
