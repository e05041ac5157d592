"""The page and the API over HTTP: who sees what, and recharges that must be refused."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests

from gpuacct.periods import week_start
from gpuacct.store import Target
from ledger import Ledger
from tests.fixtures.ledger import forge
from tests.web.conftest import NOW, Web

pytestmark = pytest.mark.integration


def test_admin_logs_in_sees_every_account_and_recharges(start_web: Callable[..., Web],
                                                        store_target: Target) -> None:
    web = start_web(ledger_at=store_target)  # the web over a SQLite, then a PostgreSQL ledger
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
    # Each failed login is in the audit, with the address it came from (the audit page shows
    # them too; this address may not log in for the rest of the minute).
    failed = [e for e in Ledger(web.ledger).audit_entries(0) if e.action == "login.failed"]
    assert [e.actor for e in failed] == ["web client 127.0.0.1"] * 5


def test_statements_of_a_month_and_what_is_refused(start_web: Callable[..., Web],
                                                   store_target: Target) -> None:
    web = start_web(ledger_at=store_target)
    admin, _ = web.admin()
    month = time.strftime("%Y-%m", time.gmtime(NOW))
    url = f"{web.url}/admin/accounts/bob/statement"
    page = admin.get(url, params={"month": month}, timeout=10)
    assert page.status_code == 200 and "Statement of account bob" in page.text
    pdf = admin.get(url, params={"month": month, "format": "pdf"}, timeout=30)
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    for params, code, text in (({"month": "2026-13"}, 400, "is not a month like 2026-11"),
                               ({"month": month, "format": "doc"}, 400, "format")):
        refused = admin.get(url, params=params, timeout=10)
        assert refused.status_code == code and text in refused.text
    missing = admin.get(f"{web.url}/admin/accounts/nobody/statement", timeout=10)
    assert missing.status_code == 404 and "there is no account &#39;nobody&#39;" in missing.text
    stranger = requests.get(url, timeout=10)  # no login: no statement, no audit
    assert stranger.status_code in (401, 403)
    assert requests.get(f"{web.url}/admin/audit", timeout=10).status_code in (401, 403)


def test_csv_export_has_a_header_exact_decimals_utf8_and_the_range(
        start_web: Callable[..., Web], store_target: Target) -> None:
    web = start_web(windows=5, ledger_at=store_target)
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


def test_the_waste_report_shows_each_users_idle_held_gpu_time_of_the_week(
        start_web: Callable[..., Web]) -> None:
    web = start_web(windows=4)  # every user 60 GPU-seconds a minute, alice 30 of them idle
    session, _ = web.admin()
    ends = [int(NOW // 60 * 60) - 60 * (4 - w) for w in range(4)]
    week = week_start(ends[-1])
    windows = sum(1 for end in ends if week_start(end) == week)  # 4, unless Monday began
    monday = time.strftime("%Y-%m-%d", time.gmtime(week))
    page = session.get(f"{web.url}/admin/waste", params={"week": monday}, timeout=10)
    assert page.status_code == 200
    assert re.findall(r'<tr><td><a href="/users/(\w+)">', page.text)[0] == "alice"  # most idle
    alice = re.search(r'/users/alice">alice</a></td>(.*?)</tr>', page.text, re.S)
    assert alice is not None
    assert re.findall(r'<td class="num">([^<]+)</td>', alice.group(1)) == [
        f"{windows / 60:.2f}", f"{windows / 120:.2f}", "50.0%",
        f"{Decimal('0.123457') * windows:.2f}", f"{Decimal('0.05') * windows:.2f}",
        f"{Decimal('0.05') / Decimal('0.123457') * 100:.1f}%"]
    answer = session.get(f"{web.url}/admin/export/waste.csv",
                         params={"from": monday, "to": "2100-01-01"}, timeout=10)
    mine = [r for r in csv.DictReader(io.StringIO(answer.text)) if r["user"] == "alice"]
    assert (Decimal(mine[0]["gpu_idle_seconds"]), Decimal(mine[0]["idle_cost"]),
            mine[0]["idle_share"]) == (Decimal(30 * windows), Decimal("0.05") * windows, "0.5000")
    assert session.get(f"{web.url}/admin/waste", params={"week": "someday"},
                       timeout=10).status_code == 400
    # A user sees their own weeks on their page, and not the report.
    as_bob = {"X-Remote-User": "bob"}
    bob = requests.get(f"{web.url}/users/bob", headers=as_bob, timeout=10)
    assert bob.status_code == 200 and 'id="weeks"' in bob.text
    assert requests.get(f"{web.url}/admin/waste", headers=as_bob, timeout=10).status_code == 403


def test_a_members_page_shows_the_group_account_they_are_charged_to(
        start_web: Callable[..., Web]) -> None:
    """bob joins the group account vision-lab: his page and the API show its balance and
    tier as his, his own usage, and the lab's transactions; the lab's statement lists him."""
    web = start_web()
    ledger = Ledger(web.ledger)
    ledger.open_account("vision-lab", Decimal(300), time.time(), "pi (cli)", "group", "pi")
    ledger.set_membership("bob", "vision-lab", "pi (cli)", time.time())
    ledger.close()
    page = requests.get(f"{web.url}/users/bob", headers={"X-Remote-User": "bob"}, timeout=10)
    assert page.status_code == 200
    assert re.search(r"Charged to the group account\s+<strong>vision-lab</strong>", page.text)
    assert '<div class="big" id="balance">300.00</div>' in page.text
    assert "opening balance" in page.text  # the lab's transactions, newest first
    api = requests.get(f"{web.url}/api/v1/accounts/bob", headers={"X-Remote-User": "bob"},
                       timeout=10).json()
    assert (api["user"], api["kind"], api["balance"]) == ("vision-lab", "group", "300")
    # A user may see only their own page, not the lab's as such.
    assert requests.get(f"{web.url}/users/vision-lab", headers={"X-Remote-User": "bob"},
                        timeout=10).status_code == 403
    admin, _ = web.admin()
    assert "vision-lab" in admin.get(f"{web.url}/admin", timeout=10).text


def test_a_users_page_sets_recharges_apart_and_escapes_what_users_named(
        start_web: Callable[..., Web]) -> None:
    """Recharges and adjustments stand out from the charges; each day's charges open to its
    jobs; a job named like markup or a formula is shown as text."""
    web = start_web()
    end = int(NOW // 60 * 60)
    with forge(web.ledger) as db:
        db.execute("INSERT INTO usage_lines VALUES ($1, 'alice', $2, 'gpu01:9835', '', '0', '1', "
                   "'0', 0, '0', '0', 'alice', NULL)",
                   (end - 60, "<script>alert(1)</script>=HYPERLINK(1)"))
    ledger = Ledger(web.ledger)
    ledger.post("alice", "recharge", Decimal(7), time.time(), "r-7", "grant <b>7</b>",
                actor="fin (cli)")
    ledger.close()
    admin, _ = web.admin()
    page = admin.get(f"{web.url}/users/alice", timeout=10).text
    postings = page.split('id="postings"')[1].split("</table>")[0]
    assert "recharge" in postings and "grant &lt;b&gt;7&lt;/b&gt;" in postings
    assert "fin (cli)" in postings and "charge" not in postings.replace("recharge", "")
    days = page.split('id="charge-days"')[1].split("</div>")[0]
    assert "<details>" in days and "job-0" in days
    assert "&lt;script&gt;alert(1)&lt;/script&gt;=HYPERLINK(1)" in days
    assert "<script>alert" not in page
