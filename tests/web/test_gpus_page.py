"""The GPUs page: every logged-in user sees every GPU as `gpuacct gpus` does (the enforcer's
list), in Chromium; with allocator.show_holders false, other users' names are hidden from
users but not from administrators; nobody logged in sees nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.fixtures.enforcement import TOKEN, Cluster
from tests.web.conftest import Web, proxied
from tests.web.test_browser import SCREENSHOTS

pytestmark = [pytest.mark.integration]
GIB = 1 << 30
A100 = "NVIDIA A100-SXM4-80GB"


def reported(*users: list[str]) -> list[dict[str, Any]]:
    """gpu01's GPUs as its node reports them: whose processes run on each."""
    return [{"index": i, "model": A100, "users": u, "memory_total_bytes": 80 * GIB,
             "memory_used_bytes": 2 * GIB if u else 0, "utilization": 0.5 if u else 0.0}
            for i, u in enumerate(users)]


def cells(page_text: str) -> list[list[str]]:
    body = page_text[page_text.index('<table id="gpus">'):]
    rows = body.split("<tr>")[2:]
    return [[c.split(">", 1)[1].split("</td>")[0].strip()
             for c in row.split("<td")[1:]] for row in rows]


def test_every_user_sees_the_gpus_as_gpuacct_gpus_lists_them(
        start_web: Callable[..., Web], cluster: Cluster, browser: Browser,
        tmp_path: Path) -> None:
    enforcer = cluster.enforcer([])
    # bob works on GPU 0; alice reserves, and gets GPU 1 (never bob's).
    status, answer = enforcer.forward("alice", {"op": "reserve", "count": 1, "seconds": 3600},
                                      gpus=reported(["bob"], [], []))
    assert status == 200 and answer["text"].startswith("granted: reservation 1, GPU 1 on gpu01")
    listed = enforcer.get("/v1/allocation/gpus?user=carol")["gpus"]
    assert [(g["index"], g["users"], g["reserved_by"], g["free"]) for g in listed] == [
        (0, ["bob"], None, False), (1, [], "alice", False), (2, [], None, True)]
    web = start_web(enforcer_url=enforcer.url, auth={"webhook_token": TOKEN})

    page = proxied("carol").get(f"{web.url}/gpus", timeout=10)
    assert page.status_code == 200
    rows = cells(page.text)
    assert [(r[0], r[1], r[5], r[7]) for r in rows] == [
        ("gpu01", "0", "bob", "no"), ("gpu01", "1", "—", "no"), ("gpu01", "2", "—", "yes")]
    assert rows[1][6].startswith("alice until") and rows[0][3] == "2.0 / 80.0"
    assert "1 of 3 GPUs free now" in page.text
    assert proxied("").get(f"{web.url}/gpus", timeout=10).status_code == 403

    view = browser.new_page(viewport={"width": 1280, "height": 600},
                            extra_http_headers={"X-Remote-User": "carol"})
    view.goto(f"{web.url}/gpus")
    expect(view.locator("#gpus tbody tr")).to_have_count(3)
    expect(view.locator("#gpus tbody tr").nth(0)).to_contain_text("bob")
    expect(view.locator("#gpus tbody tr").nth(1)).to_contain_text("alice until")
    expect(view.locator("#free")).to_have_text("1 of 3 GPUs free now")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    view.screenshot(path=SCREENSHOTS / "gpus.png", full_page=True)


def test_holders_can_be_hidden_from_users(start_web: Callable[..., Web],
                                          cluster: Cluster) -> None:
    enforcer = cluster.enforcer([], allocator={"show_holders": False})
    status, _ = enforcer.forward("alice", {"op": "reserve", "count": 1, "seconds": 3600},
                                 gpus=reported(["bob"], []))
    assert status == 200
    web = start_web(enforcer_url=enforcer.url, auth={"webhook_token": TOKEN})
    carol = proxied("carol").get(f"{web.url}/gpus", timeout=10).text
    assert "bob" not in carol and "alice" not in carol and "another user" in carol
    mine = proxied("alice").get(f"{web.url}/gpus", timeout=10).text
    assert "alice until" in mine and "bob" not in mine
    admin, _ = web.admin()
    everyone = admin.get(f"{web.url}/gpus", timeout=10).text
    assert "bob" in everyone and "alice until" in everyone
