"""The page in a real browser (Debian's Chromium through Playwright): an administrator logs in,
opens the overview and a user, recharges, and sees the new balance and the transaction,
downloads the month's statement and finds the recharge with its actor in the audit; a user
sees their own page and is refused another's. Screenshots go to $GPUACCT_SCREENSHOTS."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.web.conftest import PASSWORD, Web

pytestmark = pytest.mark.integration
SCREENSHOTS = Path(os.environ.get("GPUACCT_SCREENSHOTS", "/tmp/gpuacct-screenshots"))


def test_admin_recharges_a_user_in_the_browser(start_web: Callable[..., Web],
                                                browser: Browser) -> None:
    web = start_web(users=12)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{web.url}/admin")
    expect(page.get_by_text("administrators only")).to_be_visible()
    page.goto(f"{web.url}/login")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{web.url}/admin")
    expect(page.locator("#accounts tbody tr")).to_have_count(12)
    page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)

    page.get_by_role("link", name="alice", exact=True).click()
    expect(page).to_have_url(f"{web.url}/users/alice")
    before = page.locator("#balance").inner_text()
    page.get_by_label("Recharge").fill("25.50")
    page.locator("form[action$='/recharge'] input[name=reason]").fill("grant 42")
    page.get_by_role("button", name="Recharge").click()
    expect(page.get_by_role("status")).to_contain_text("recharge of 25.50 done")
    assert before == "99.38"  # 100 - 5 windows of 0.123457
    expect(page.locator("#balance")).to_have_text("124.88")
    newest = page.locator("#transactions tbody tr").first
    expect(newest).to_contain_text("recharge")
    expect(newest).to_contain_text("25.50")
    expect(newest).to_contain_text("grant 42")
    page.screenshot(path=SCREENSHOTS / "user.png", full_page=True)

    # alice's statement of this month, as CSV: the recharge with its actor; the same month as
    # a page; then the audit names who recharged.
    month = time.strftime("%Y-%m", time.gmtime())
    page.locator("#statement input[name=month]").fill(month)
    page.locator("#statement select[name=format]").select_option("csv")
    with page.expect_download() as download:
        page.get_by_role("button", name="Statement").click()
    assert download.value.suggested_filename == f"statement-alice-{month}.csv"
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    [recharge] = [r[3:] for r in rows if r[0] == "posting" and r[2] == "recharge"]
    assert recharge == ["25.500000", "grant 42", "admin (web)"]
    [closing] = [r[3] for r in rows if r[0] == "closing"]
    assert closing == "124.882715"  # the ledger's balance, to the micro-unit
    page.goto(f"{web.url}/admin/accounts/alice/statement?month={month}")
    expect(page.get_by_role("heading", name=f"Statement of account alice, {month}")).to_be_visible()
    expect(page.get_by_text("Recharge: grant 42")).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "statement.png", full_page=True)
    page.goto(f"{web.url}/admin")
    page.get_by_role("link", name="Audit").click()
    newest = page.locator("#audit tbody tr").first
    for text in ("admin (web)", "recharge", "alice", "+25.50 grant 42"):
        expect(newest).to_contain_text(text)
    page.screenshot(path=SCREENSHOTS / "audit.png", full_page=True)


def test_a_user_sees_their_own_page_and_not_another(start_web: Callable[..., Web],
                                                      browser: Browser) -> None:
    web = start_web()
    context = browser.new_context(extra_http_headers={"X-Remote-User": "bob"})
    page = context.new_page()
    page.goto(f"{web.url}/")
    expect(page).to_have_url(f"{web.url}/users/bob")
    expect(page.get_by_role("heading", name="bob")).to_be_visible()
    expect(page.get_by_role("button", name="Recharge")).to_have_count(0)
    answer = page.goto(f"{web.url}/users/alice")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("alert")).to_have_text("you may see only your own account")
    context.close()
