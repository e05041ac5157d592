"""Named administrators with roles, over HTTP against the real web process: finance handles
money but not administrators; a manager sees only their group account and its members, sets
the members' limits and touches no money; every denial is a 403 that says why, and every
change is in the audit under its actor's name."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests

from gpuacct.config import ConfigError, settings_from_mapping
from gpuacct.periods import month_start
from ledger import Ledger
from tests.web.conftest import Web
from web.auth import hash_password

pytestmark = pytest.mark.integration
STAFF = {"fiona": {"password_hash": hash_password("fiona's secret"), "role": "finance"},
         "mark": {"password_hash": hash_password("mark's secret"), "role": "manager",
                  "accounts": ["vision-lab"]}}


@pytest.fixture
def web(start_web: Callable[..., Web]) -> Web:
    web = start_web(administrators=STAFF)
    ledger = Ledger(web.ledger)
    ledger.open_account("vision-lab", Decimal(300), time.time(), "pi (cli)", "group", "pi")
    ledger.set_membership("bob", "vision-lab", "pi (cli)", time.time())
    ledger.close()
    return web


def test_finance_recharges_but_does_not_manage_administrators(web: Web) -> None:
    fiona, csrf = web.admin("fiona", "fiona's secret")
    done = fiona.post(f"{web.url}/users/alice/recharge", timeout=10,
                      data={"amount": "10", "reason": "grant 5", "csrf": csrf})
    assert done.status_code == 200 and "recharge of 10 done" in done.text
    denied = fiona.get(f"{web.url}/admin/administrators", timeout=10)
    assert denied.status_code == 403
    assert "this page needs the admin role; fiona is a finance" in denied.text
    assert fiona.get(f"{web.url}/admin/nodes", timeout=10).status_code == 403
    audit = fiona.get(f"{web.url}/admin/audit", timeout=10)
    assert audit.status_code == 200 and "fiona (web)" in audit.text
    [entry] = [e for e in Ledger(web.ledger).audit_entries(0) if e.action == "recharge"]
    assert (entry.actor, entry.target, entry.detail) == ("fiona (web)", "alice", "+10 grant 5")
    admin, _ = web.admin()
    listed = admin.get(f"{web.url}/admin/administrators", timeout=10).text
    assert "fiona" in listed and "manager" in listed and "vision-lab" in listed


def test_a_manager_sees_only_their_group_and_moves_no_money(web: Web) -> None:
    mark, csrf = web.admin("mark", "mark's secret")
    overview = mark.get(f"{web.url}/admin", timeout=10)
    assert overview.status_code == 200
    assert "/users/vision-lab" in overview.text and "/users/bob" in overview.text
    assert "/users/alice" not in overview.text and "/users/carol" not in overview.text
    assert [a["user"] for a in mark.get(f"{web.url}/api/v1/accounts", timeout=10).json()] == [
        "bob", "vision-lab"]
    for url, why in ((f"{web.url}/users/alice", "mark manages vision-lab: alice is not "
                      "charged to it"),
                     (f"{web.url}/admin/accounts/alice/statement",
                      "mark manages vision-lab, not alice"),
                     (f"{web.url}/admin/audit", "needs the admin or finance role; mark is a "
                      "manager"),
                     (f"{web.url}/admin/prices", "mark is a manager")):
        denied = mark.get(url, timeout=10)
        assert denied.status_code == 403 and why in denied.text, url
    refused = mark.post(f"{web.url}/users/vision-lab/recharge", timeout=10,
                        data={"amount": "10", "csrf": csrf})
    assert refused.status_code == 403 and "mark is a manager" in refused.text
    assert Ledger(web.ledger).balance("vision-lab") == Decimal(300)
    assert mark.get(f"{web.url}/users/bob", timeout=10).status_code == 200
    statement = mark.get(f"{web.url}/admin/accounts/vision-lab/statement", timeout=10)
    assert statement.status_code == 200 and "Statement of account vision-lab" in statement.text
    # The members' limits: bob's, then a user who is not a member (refused, nothing written).
    done = mark.post(f"{web.url}/admin/accounts/vision-lab/limits", timeout=10,
                     data={"user": "bob", "amount": "40", "csrf": csrf})
    assert done.status_code == 200 and "bob may spend 40 a month" in done.text
    for data, why in (({"user": "alice", "amount": "5"}, "alice is not a member of vision-lab"),
                      ({"user": "bob", "amount": "lots"}, "is not a number")):
        refused = mark.post(f"{web.url}/admin/accounts/vision-lab/limits", timeout=10,
                            data={**data, "csrf": csrf})
        assert refused.status_code == 400 and why in refused.text
    ledger = Ledger(web.ledger)
    [bob] = ledger.member_months(month_start(time.time()), "vision-lab")
    assert (bob.user, bob.limit) == ("bob", Decimal(40))
    [entry] = [e for e in ledger.audit_entries(0) if e.action == "member.limit"]
    assert (entry.actor, entry.target, entry.detail) == ("mark (web)", "vision-lab",
                                                         "bob: 40 a month")


def test_wrong_names_and_passwords_are_refused_and_recorded(web: Web) -> None:
    session = requests.Session()
    page = session.get(f"{web.url}/login", timeout=10).text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    for name, password in (("fiona", "mark's secret"), ("nobody", "fiona's secret")):
        answer = session.post(f"{web.url}/login", timeout=10,
                              data={"name": name, "password": password, "csrf": csrf})
        assert answer.status_code == 401 and "wrong name or password" in answer.text
    failed = [e.target for e in Ledger(web.ledger).audit_entries(0)
              if e.action == "login.failed"]
    assert failed == ["nobody", "fiona"]


@pytest.mark.parametrize(("administrator", "problem"), [
    ({"password_hash": "scrypt$x", "role": "manager"}, "a manager needs the accounts they manage"),
    ({"password_hash": "scrypt$x", "role": "finance", "accounts": ["a"]},
     "only a manager has accounts"),
    ({"password_hash": "scrypt$x", "role": "root"}, "web.administrators.eve.role"),
])
def test_bad_administrators_are_refused_by_the_config(administrator: dict[str, object],
                                                      problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        settings_from_mapping({"web": {"administrators": {"eve": administrator}}})


def test_an_admin_changes_members_on_the_web_and_a_manager_may_not(web: Web) -> None:
    admin, csrf = web.admin()

    def change(session: requests.Session, token: str, account: str, **form: str
               ) -> requests.Response:
        return session.post(f"{web.url}/admin/accounts/{account}/members", timeout=10,
                            data={**form, "csrf": token})
    done = change(admin, csrf, "vision-lab", user="carol")
    assert done.status_code == 200 and "carol is charged to vision-lab from now on" in done.text
    page = admin.get(f"{web.url}/users/vision-lab", timeout=10).text
    table = page.split('id="members-table"')[1].split("</table>")[0]
    assert "/users/bob" in table and "/users/carol" in table
    ledger = Ledger(web.ledger)
    ledger.open_account("nlp-lab", Decimal(50), time.time(), "pi (cli)", "group", "pi2")
    refused = change(admin, csrf, "nlp-lab", user="carol")
    assert refused.status_code == 400
    assert "carol is charged to vision-lab; a user is charged to one account" in refused.text
    assert change(admin, csrf, "nlp-lab", user="carol", move="true").status_code == 200
    assert change(admin, csrf, "vision-lab", user="bob", action="remove").status_code == 200
    refused = change(admin, csrf, "vision-lab", user="alice", action="remove")
    assert refused.status_code == 400 and "alice is not a member of vision-lab" in refused.text
    assert ledger.charged_to(time.time() + 1) == {"alice": "alice", "bob": "bob",
                                                  "carol": "nlp-lab"}
    mark, token = web.admin("mark", "mark's secret")
    denied = change(mark, token, "vision-lab", user="alice")
    assert denied.status_code == 403 and "this page needs the admin role" in denied.text
    moves = [(e.actor, e.target, e.detail) for e in ledger.audit_entries(0)
             if e.action == "membership"][:3]
    assert moves == [("admin (web)", "bob", "charged to own"),
                     ("admin (web)", "carol", "charged to nlp-lab"),
                     ("admin (web)", "carol", "charged to vision-lab")]
