"""Price history and new price versions, through the page and the API."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests

from ledger import Ledger
from tests.web.conftest import Web

pytestmark = pytest.mark.integration
GPU = "A100 = 0.75\nH100 = 1.20\n"


def form(csrf: str, **changes: str) -> dict[str, str]:
    in_a_day = datetime.fromtimestamp(time.time() + 86400, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {"effective": in_a_day, "gpu": GPU, "other_gpu_per_minute": "0.12",
            "cpu_per_core_minute": "0.02", "reason": "new hardware", "csrf": csrf, **changes}


def stored(web: Web) -> list[str]:
    return [reason for _, _, reason in Ledger(web.ledger).price_versions()]


def test_an_admin_adds_prices_from_a_time_and_sees_the_history(
        start_web: Callable[..., Web]) -> None:
    web = start_web()
    session, csrf = web.admin()
    page = session.get(f"{web.url}/admin/prices", timeout=10).text
    assert "1970-01-01 00:00:00 <strong>(in force)</strong>" in page and "A100 0.50" in page
    answer = session.post(f"{web.url}/admin/prices", data=form(csrf), timeout=10)
    assert answer.status_code == 200 and "new prices in force from" in answer.text
    assert "A100 0.75 · H100 1.20" in answer.text and "web: new hardware" in answer.text
    [(version, _, _)] = Ledger(web.ledger).price_versions()
    assert (str(version.gpu[1].per_minute), str(version.cpu_per_core_minute)) == ("1.20", "0.02")
    history = session.get(f"{web.url}/api/v1/prices", timeout=10).json()
    assert [(p["source"], p["in_force"]) for p in history] == [("web", False), ("config", True)]


@pytest.mark.parametrize(("changes", "problem"), [
    ({"effective": "2020-01-01T00:00"}, "prices cannot change the past"),
    ({"effective": "next tuesday"}, "effective: 'next tuesday' is not valid"),
    ({"gpu": "A100 = -1"}, "gpu[0].per_minute: '-1' is not valid"),
    ({"gpu": "A100 = NaN"}, "gpu[0].per_minute: 'NaN' is not valid"),
    ({"gpu": "A100 0.5"}, "line 1: write it as 'pattern = price per minute'"),
    ({"gpu": "A100( = 0.5"}, "not a regular expression"),
    ({"gpu": "A100 = 1e12"}, "is not plausible"),
    ({"cpu_per_core_minute": "Infinity"}, "cpu_per_core_minute: 'Infinity' is not valid"),
    ({"other_gpu_per_minute": "cheap"}, "other_gpu_per_minute: 'cheap' is not valid"),
    ({"reason": ""}, "reason:"),
])
def test_bad_prices_are_refused_and_nothing_is_stored(
        start_web: Callable[..., Web], changes: dict[str, str], problem: str) -> None:
    web = start_web()
    session, csrf = web.admin()
    answer = session.post(f"{web.url}/admin/prices", data=form(csrf, **changes), timeout=10)
    shown = re.search(r'<p class="error" role="alert">(.*?)</p>', answer.text, re.S)
    assert answer.status_code == 400 and shown, answer.text
    assert problem in html.unescape(shown.group(1))
    assert stored(web) == []


def test_prices_need_an_admin_and_the_csrf_token(start_web: Callable[..., Web]) -> None:
    web = start_web()
    session, csrf = web.admin()
    wrong = session.post(f"{web.url}/admin/prices", data=form("forged"), timeout=10)
    assert wrong.status_code == 403 and "CSRF" in wrong.text
    body = {k: v for k, v in form(csrf).items() if k not in ("csrf", "gpu")}
    assert session.post(f"{web.url}/api/v1/prices", json=body, timeout=10).status_code == 403
    user = requests.post(f"{web.url}/api/v1/prices", json=body, timeout=10,
                         headers={"X-Remote-User": "alice", "X-CSRF-Token": csrf})
    assert user.status_code == 403
    assert stored(web) == []
    ok = session.post(f"{web.url}/api/v1/prices", json=body, timeout=10,
                      headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201 and ok.json()[0]["reason"] == "new hardware"
    assert stored(web) == ["new hardware"]
