"""The Jobs view and `GET /api/v1/jobs` over a job store: who sees what, filters, pages, errors
that name the problem, and the page in Chromium with secrets redacted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import requests
from playwright.sync_api import Browser

from gpuacct import store
from gpuacct.store.places import JOBS
from jobstore.store import JobSeen, JobStore
from tests.web.conftest import Web

NOW = time.time()


def fill_jobs(web: Web) -> None:
    jobs = JobStore(store.beside(web.ledger, JOBS))
    alice = [JobSeen("gpu01:9835", "alice", f"train-{i}", NOW - 3600 + i, name="train.py",
                     framework="torch", script="train.py",
                     args="--epochs 3 --token <redacted>", cwd="/home/alice/proj")
             for i in range(30)]
    bob = [JobSeen("npu01:9835", "bob", "ms-1", NOW - 600, framework="mindspore",
                   script="msrun", args="--worker_num 8"),
           JobSeen("gpu02:9835", "bob", "old", NOW - 7200, running=False)]
    jobs.record(NOW - 120, ["gpu01:9835", "npu01:9835", "gpu02:9835"], alice + bob, 60)
    jobs.record(NOW - 30, ["gpu01:9835", "gpu02:9835"], alice[:29], 60)  # npu01 went silent
    jobs.close()


def as_user(web: Web, user: str, path: str) -> requests.Response:
    return requests.get(f"{web.url}{path}", headers={"X-Remote-User": user}, timeout=10)


def test_jobs_api_filters_pages_and_keeps_users_apart(start_web: Callable[..., Web]) -> None:
    web = start_web()
    fill_jobs(web)
    admin, _ = web.admin()
    everyone = admin.get(f"{web.url}/api/v1/jobs?per_page=500", timeout=10).json()
    assert everyone["total"] == 32
    states = {(j["user"], j["job"]): j["state"] for j in everyone["items"]}
    assert states[("bob", "ms-1")] == "lost" and states[("bob", "old")] == "finished"
    assert states[("alice", "train-29")] == "finished"  # gone from its node's report
    lost = admin.get(f"{web.url}/api/v1/jobs?state=lost", timeout=10).json()
    assert [(j["node"], j["framework"], j["lost_at"] is not None) for j in lost["items"]] == [
        ("npu01:9835", "mindspore", True)]
    on_gpu01 = admin.get(f"{web.url}/api/v1/jobs?node=gpu01:9835&per_page=10&page=2",
                         timeout=10).json()
    assert (on_gpu01["total"], len(on_gpu01["items"]), on_gpu01["page"]) == (30, 10, 2)

    mine = as_user(web, "alice", "/api/v1/jobs?per_page=5").json()
    assert mine["total"] == 30 and {j["user"] for j in mine["items"]} == {"alice"}
    assert mine["items"][0]["args"] == "--epochs 3 --token <redacted>"
    assert as_user(web, "alice", "/api/v1/jobs?user=bob").status_code == 403
    assert as_user(web, "bob", "/api/v1/jobs").json()["total"] == 2
    assert requests.get(f"{web.url}/api/v1/jobs", timeout=10).status_code == 403

    bad = {"state=gone": "state", "since=yesterday": "since: 'yesterday' is not a date",
           "per_page=0": "per_page", "page=-1": "page"}
    for query, named in bad.items():
        answer = as_user(web, "alice", f"/api/v1/jobs?{query}")
        assert answer.status_code == 400 and named in answer.json()["detail"], answer.text
    since = as_user(web, "bob", f"/api/v1/jobs?since={time.strftime('%Y-%m-%d')}T00:00:00Z")
    assert {j["job"] for j in since.json()["items"]} >= {"ms-1"}


def test_before_billing_keeps_any_job_the_view_is_empty_and_says_why(
        start_web: Callable[..., Web]) -> None:
    web = start_web()
    answer = as_user(web, "alice", "/api/v1/jobs")
    assert answer.status_code == 200 and answer.json()["total"] == 0
    page = as_user(web, "alice", "/jobs")
    assert page.status_code == 200 and "no jobs are kept yet" in page.text


def test_the_jobs_page_in_chromium(start_web: Callable[..., Web], browser: Browser,
                                   tmp_path: Path) -> None:
    web = start_web(page_size=10)
    fill_jobs(web)
    page = browser.new_page(extra_http_headers={"X-Remote-User": "bob"})
    page.goto(f"{web.url}/users/bob")
    page.click("#downloads >> text=Jobs")
    page.wait_for_selector("#jobs")
    rows = page.locator("#jobs tbody tr")
    assert rows.count() == 2
    lost = page.locator("tr.job-lost")
    assert "ms-1" in lost.inner_text() and "mindspore" in lost.inner_text()
    page.select_option("select[name=state]", "finished")
    page.click("#filters button")
    page.wait_for_url("**/jobs?*state=finished*")
    assert page.locator("#jobs tbody tr").count() == 1
    page.screenshot(path=str(tmp_path / "jobs-bob.png"), full_page=True)

    page = browser.new_page(extra_http_headers={"X-Remote-User": "alice"})
    page.goto(f"{web.url}/jobs")
    text = page.locator("#jobs").inner_text()
    assert "--token <redacted>" in text and "bob" not in text
    assert "30 jobs, page 1 of 3" in page.locator("#paging").inner_text()
    page.click("#paging >> text=older")
    page.wait_for_url("**page=1*")
