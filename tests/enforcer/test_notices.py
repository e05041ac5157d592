"""Notices by e-mail and chat from a real gpuacct-enforcer, through Apprise, to a real SMTP
server (aiosmtpd) and a local HTTP receiver standing for a chat webhook: each event once per
channel, whatever Alertmanager repeats and however often the enforcer restarts; a server that
is down makes them wait, counted, and they arrive once it is back; at most
`per_user_per_hour` a user; a user's own address and channels."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.enforcement import TOKEN, Cluster, Enforcer, alert, notification
from tests.fixtures.notices import ChatReceiver, SmtpServer

pytestmark = [pytest.mark.integration]
PAGE = "http://gpuacct.example.org"


def sections(smtp: SmtpServer, chat: ChatReceiver, **extra: Any) -> dict[str, Any]:
    return {"notifications": {"channels": {
        "email": {"url": smtp.url(), "address": "{user}@example.org"},
        "chat": {"url": chat.url()}}, "check_interval_seconds": 0.2, "retry_max_seconds": 1,
        **extra}, "web": {"public_url": PAGE}}


def tier(user: str, name: str, action: str, notice: str | None = None,
         starts: str = "2026-12-01T10:00:00Z", status: str = "firing") -> dict[str, Any]:
    a = alert(user, action, name, status, 50 if action == "throttle" else None, starts)
    if notice:
        a["labels"]["notice"] = notice
    a["annotations"] = {"summary": f"{user}: {name}", "description": f"{user} has 12.5 left"}
    return a


def post(enforcer: Enforcer, *alerts: dict[str, Any]) -> None:
    status, answer = enforcer.post_alerts(notification(*alerts))
    assert status == 200, answer


def settle(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def metric(enforcer: Enforcer, name: str, channel: str) -> float:
    with urllib.request.urlopen(f"{enforcer.url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf'^{name}{{channel="{channel}"}} (\S+)$', text, re.M)
    assert found, (name, channel, text[-2000:])
    return float(found.group(1))


def test_each_notice_reaches_the_user_once_by_mail_and_chat(
        cluster: Cluster, smtp_server: SmtpServer, chat_receiver: ChatReceiver) -> None:
    enforcer = cluster.enforcer([], sections=sections(smtp_server, chat_receiver))
    warning = tier("alice", "GpuacctBalanceLow", "notify")
    post(enforcer, warning)
    settle(lambda: len(smtp_server.to("alice@example.org")) == 1
           and len(chat_receiver.about("alice")) == 1, "alice's first notice")
    [mail] = smtp_server.to("alice@example.org")
    assert mail.subject == "alice: GpuacctBalanceLow"
    assert "alice has 12.5 left" in mail.body and "What to do:" in mail.body
    assert f"{PAGE}/users/alice" in mail.body
    [chat] = chat_receiver.about("alice")
    assert chat["title"] == mail.subject and "alice has 12.5 left" in chat["message"]

    # Alertmanager repeats the delivery: nothing more.
    post(enforcer, warning)
    # The limited tier's two alerts, in two deliveries: one notice.
    post(enforcer, tier("alice", "GpuacctBalanceLimitedBlockGpu", "block", "limited"))
    post(enforcer, tier("alice", "GpuacctBalanceLimitedThrottleCpu", "throttle", "limited"))
    settle(lambda: len(smtp_server.to("alice@example.org")) == 2, "the limited notice")
    # The enforcer restarts: what it told stays told.
    enforcer.process.stop()
    enforcer.process.start().wait_ready()
    time.sleep(1.5)
    assert [m.subject for m in smtp_server.to("alice@example.org")] == [
        "alice: GpuacctBalanceLow", "alice: GpuacctBalanceLimitedBlockGpu"]
    assert len(chat_receiver.about("alice")) == 2
    assert metric(enforcer, "gpuacct_notice_backlog", "email") == 0

    # The warning ends and starts again: a new notice.
    post(enforcer, tier("alice", "GpuacctBalanceLow", "notify", status="resolved"))
    post(enforcer, tier("alice", "GpuacctBalanceLow", "notify", starts="2026-12-01T11:00:00Z"))
    settle(lambda: len(smtp_server.to("alice@example.org")) == 3, "the warning again")
    time.sleep(0.5)
    assert len(smtp_server.to("alice@example.org")) == 3
    assert len(chat_receiver.about("alice")) == 3


def test_notices_wait_for_a_server_that_is_down_and_arrive_once(
        cluster: Cluster, smtp_server: SmtpServer, chat_receiver: ChatReceiver) -> None:
    enforcer = cluster.enforcer([], sections=sections(smtp_server, chat_receiver))
    smtp_server.stop()
    chat_receiver.status = 500
    post(enforcer, tier("bob", "GpuacctBalanceExhaustedKillNotice", "notify"))
    settle(lambda: metric(enforcer, "gpuacct_notice_failures_total", "email") >= 2
           and metric(enforcer, "gpuacct_notice_failures_total", "chat") >= 2, "failed tries")
    assert metric(enforcer, "gpuacct_notice_backlog", "email") == 1
    assert metric(enforcer, "gpuacct_notice_backlog", "chat") == 1
    assert metric(enforcer, "gpuacct_notice_oldest_pending_seconds", "email") > 0
    assert smtp_server.received == [] and chat_receiver.received == []
    history = enforcer.get("/v1/notices?user=bob")
    assert {h["channel"] for h in history if h["error"]} == {"email", "chat"}

    smtp_server.start()  # the same port
    chat_receiver.status = 200
    settle(lambda: len(smtp_server.to("bob@example.org")) == 1
           and len(chat_receiver.about("bob")) == 1, "the notices after the outage")
    time.sleep(2.5)  # more than the longest backoff: nothing doubled
    assert len(smtp_server.to("bob@example.org")) == 1 and len(chat_receiver.about("bob")) == 1
    assert metric(enforcer, "gpuacct_notice_backlog", "email") == 0
    assert metric(enforcer, "gpuacct_notices_sent_total", "email") == 1


def test_a_users_choice_and_their_hourly_share(
        cluster: Cluster, smtp_server: SmtpServer, chat_receiver: ChatReceiver) -> None:
    enforcer = cluster.enforcer([], sections=sections(smtp_server, chat_receiver,
                                                      per_user_per_hour=2))
    # carol's third event in the hour waits.
    for name in ("A", "B", "C"):
        post(enforcer, tier("carol", f"Gpuacct{name}", "notify"))
    settle(lambda: len(smtp_server.to("carol@example.org")) == 2, "carol's first two")
    time.sleep(1)
    assert len(smtp_server.to("carol@example.org")) == 2
    assert metric(enforcer, "gpuacct_notice_backlog", "email") == 1

    # dave chooses his own address and e-mail only.
    request = urllib.request.Request(
        f"{enforcer.url}/v1/notices/settings/dave", method="PUT",
        data=json.dumps({"address": "dave@lab.example", "channels": ["email"]}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer)["channels"] == ["email"]
    post(enforcer, tier("dave", "GpuacctBalanceLow", "notify"))
    settle(lambda: len(smtp_server.to("dave@lab.example")) == 1, "dave's mail")
    # A recharge the web reports, twice: told once.
    for _ in range(2):
        request = urllib.request.Request(
            f"{enforcer.url}/v1/notices", data=json.dumps({
                "event": "recharge:web-1", "user": "dave", "subject": "dave was recharged",
                "body": "50 was added"}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass
    settle(lambda: len(smtp_server.to("dave@lab.example")) == 2, "dave's recharge")
    time.sleep(0.5)
    assert [m.subject for m in smtp_server.to("dave@lab.example")] == [
        "dave: GpuacctBalanceLow", "dave was recharged"]
    assert chat_receiver.about("dave") == []
