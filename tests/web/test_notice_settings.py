"""A user's own notice settings on their page (CSRF-checked, nobody else's), kept by a real
gpuacct-enforcer; a recharge in the web is told to its user once, by a real SMTP server."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.fixtures.enforcement import TOKEN, Cluster
from tests.fixtures.notices import ChatReceiver, SmtpServer
from tests.web.conftest import Web, csrf_of, proxied

pytestmark = [pytest.mark.integration]


def test_users_choose_their_own_notices_and_hear_of_recharges(
        start_web: Callable[..., Web], cluster: Cluster, smtp_server: SmtpServer,
        chat_receiver: ChatReceiver) -> None:
    enforcer = cluster.enforcer([], sections={"notifications": {
        "channels": {"email": {"url": smtp_server.url(), "address": "{user}@example.org"},
                     "chat": {"url": chat_receiver.url()}},
        "check_interval_seconds": 0.2}})
    web = start_web(enforcer_url=enforcer.url, auth={"webhook_token": TOKEN})
    alice = proxied("alice")
    page = alice.get(f"{web.url}/users/alice", timeout=10).text
    card = page[page.index('id="notices"'):]
    assert 'value="email" checked' in card and 'value="chat" checked' in card
    token = csrf_of(page)

    # Without the form's token, or for someone else: refused, nothing kept.
    assert alice.post(f"{web.url}/users/alice/notices", timeout=10,
                      data={"address": "a@lab.example", "channels": ["email"]}).status_code == 403
    bob = proxied("bob")
    bob_token = csrf_of(bob.get(f"{web.url}/users/bob", timeout=10).text)
    refused = bob.post(f"{web.url}/users/alice/notices", timeout=10, data={
        "csrf": bob_token, "address": "bob@evil.example", "channels": ["chat"]})
    assert refused.status_code == 403 and "only your own notices" in refused.text
    bad = alice.post(f"{web.url}/users/alice/notices", timeout=10,
                     data={"csrf": token, "address": "a b@x", "channels": ["email"]})
    assert bad.status_code == 400 and "expected one address" in bad.text
    assert enforcer.get("/v1/notices/settings/alice")["address"] is None

    saved = alice.post(f"{web.url}/users/alice/notices", timeout=10, data={
        "csrf": token, "address": "alice@lab.example", "channels": ["email"]})
    assert saved.status_code == 200 and "notice settings saved" in saved.text
    kept = enforcer.get("/v1/notices/settings/alice")
    assert (kept["address"], kept["channels"], sorted(kept["available"])) == (
        "alice@lab.example", ["email"], ["chat", "email"])

    # An administrator recharges her: she hears of it once, where she chose.
    admin, admin_token = web.admin()
    done = admin.post(f"{web.url}/users/alice/recharge", timeout=10,
                      data={"amount": "5", "reason": "grant", "csrf": admin_token})
    assert done.status_code == 200, done.text
    deadline = time.monotonic() + 15
    while not smtp_server.to("alice@lab.example"):
        assert time.monotonic() < deadline, "no recharge notice"
        time.sleep(0.05)
    time.sleep(0.5)
    [mail] = smtp_server.to("alice@lab.example")
    assert mail.subject == "alice's account was recharged with 5.00"
    assert "its balance is 104.38 now" in mail.body
    assert chat_receiver.received == []
