"""The page and the API over HTTP: who sees what, and recharges that must be refused."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests

from tests.web.conftest import NOW, Web

pytestmark = pytest.mark.integration


def test_admin_logs_in_sees_every_account_and_recharges(start_web: Callable[..., Web]) -> None:
    web = start_web()
    session, csrf = web.admin()
    overview = session.get(f"{web.url}/admin", timeout=10).text
    for user in ("alice", "bob", "carol"):
        assert f'href="/users/{user}"' in overview
    page = session.get(f"{web.url}/users/alice", timeout=10)
    assert page.status_code == 200 and 'id="chart"' in page.text
    before = web.balance("alice")
    answer = session.post(f"{web.url}/users/alice/recharge",
                          data={"amount": "25.50", "reason": "grant 42", "csrf": csrf},
                          timeout=10)
    assert answer.status_code == 200
    assert web.balance("alice") == before + Decimal("25.50")
    assert "recharge of 25.50 done" in answer.text and "grant 42" in answer.text


@pytest.mark.parametrize(("amount", "problem"), [
    ("-5", "is negative"), ("0", "must not be zero"), ("NaN", "not a finite number"),
    ("Infinity", "not a finite number"), ("ten", "not a number"),
    ("1.001", "more than 2 decimal places"), ("1e12", "larger than the largest amount"),
    ("", "not a number"),
])
def test_a_bad_recharge_is_refused_with_a_message_and_changes_nothing(
        start_web: Callable[..., Web], amount: str, problem: str) -> None:
    web = start_web()
    session, csrf = web.admin()
    before = web.balance("alice")
    answer = session.post(f"{web.url}/users/alice/recharge",
                          data={"amount": amount, "csrf": csrf}, timeout=10)
    assert answer.status_code == 400
    assert problem in answer.text
    assert web.balance("alice") == before
    api = session.post(f"{web.url}/api/v1/accounts/alice/recharge", json={"amount": amount},
                       headers={"X-CSRF-Token": csrf}, timeout=10)
    assert api.status_code == 400 and problem in api.json()["detail"]
    assert web.balance("alice") == before


def test_recharge_of_an_unknown_user_or_with_a_wrong_csrf_token_is_refused(
        start_web: Callable[..., Web]) -> None:
    web = start_web()
    session, csrf = web.admin()
    unknown = session.post(f"{web.url}/users/mallory/recharge",
                           data={"amount": "5", "csrf": csrf}, timeout=10)
    assert unknown.status_code == 404 and "no account &#39;mallory&#39;" in unknown.text
    before = web.balance("alice")
    for token in ("wrong", ""):
        forged = session.post(f"{web.url}/users/alice/recharge",
                              data={"amount": "5", "csrf": token}, timeout=10)
        assert forged.status_code == 403 and "CSRF" in forged.text
        api = session.post(f"{web.url}/api/v1/accounts/alice/recharge", json={"amount": "5"},
                           headers={"X-CSRF-Token": token}, timeout=10)
        assert api.status_code == 403
    assert web.balance("alice") == before


def test_users_see_only_their_own_page_and_strangers_nothing(
        start_web: Callable[..., Web]) -> None:
    web = start_web()
    as_bob = {"X-Remote-User": "bob"}
    assert requests.get(f"{web.url}/users/bob", headers=as_bob, timeout=10).status_code == 200
    other = requests.get(f"{web.url}/users/alice", headers=as_bob, timeout=10)
    assert other.status_code == 403 and "only your own" in other.text
    assert requests.get(f"{web.url}/api/v1/accounts/alice", headers=as_bob,
                        timeout=10).status_code == 403
    assert requests.get(f"{web.url}/api/v1/accounts/bob", headers=as_bob,
                        timeout=10).json()["user"] == "bob"
    assert requests.get(f"{web.url}/admin", headers=as_bob, timeout=10).status_code == 403
    assert requests.post(f"{web.url}/users/bob/recharge", headers=as_bob,
                         data={"amount": "5"}, timeout=10).status_code == 403
    assert requests.get(f"{web.url}/users/bob", timeout=10).status_code == 403  # nobody


def test_the_user_header_counts_only_from_trusted_proxies(
        start_web: Callable[..., Web]) -> None:
    web = start_web(trusted_proxies=["10.9.9.9"])
    assert requests.get(f"{web.url}/users/bob", headers={"X-Remote-User": "bob"},
                        timeout=10).status_code == 403


def test_logins_are_rate_limited(start_web: Callable[..., Web]) -> None:
    web = start_web()
    session = requests.Session()
    page = session.get(f"{web.url}/login", timeout=10).text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    codes = [session.post(f"{web.url}/login", data={"password": "guess", "csrf": csrf},
                          timeout=10).status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]


def test_csv_export_has_a_header_exact_decimals_utf8_and_the_range(
        start_web: Callable[..., Web]) -> None:
    web = start_web(windows=5)
    session, _ = web.admin()
    first = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((NOW // 60 * 60) - 240))
    last = time.strftime("%Y-%m-%dT%H:%M", time.gmtime((NOW // 60 * 60) - 60))
    answer = session.get(f"{web.url}/admin/export/usage.csv",
                         params={"from": first, "to": last}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(answer.content.decode("utf-8"))))
    assert rows[0][:3] == ["window_start", "window_end", "user"]
    ends = {r[1] for r in rows[1:]}
    assert len(ends) == 3  # windows ending at -240, -180, -120 s; -60 is excluded (to)
    assert {r[8] for r in rows[1:] if r[2] == "bob"} == {"0.246914"}
    bad = session.get(f"{web.url}/admin/export/usage.csv", params={"from": "soon", "to": "x"},
                      timeout=10)
    assert bad.status_code == 400 and "is not a date" in bad.text
