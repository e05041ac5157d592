"""A node's exporter killed with SIGKILL: its running jobs show `lost` on the web page and in the
API once billing.jobs.lost_after_seconds have passed; restarted, they are reconciled (running
if still alive, finished if they ended meanwhile). Real exporter, Prometheus, billing engine and
web, real processes of a test user."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from stack.process import free_port
from tests.fixtures.exporter import Exporter
from tests.fixtures.servers import Server, wait_for
from tests.fixtures.users import Processes, UnixUser, stand_in_library
from tests.web.conftest import Web

pytestmark = [pytest.mark.root, pytest.mark.integration]
LOST_AFTER = 3.0


def jobs_of(web: Web, user: str) -> dict[str, dict[str, Any]]:
    answer = requests.get(f"{web.url}/api/v1/jobs?per_page=500",
                          headers={"X-Remote-User": user}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {j["job"]: j for j in answer.json()["items"]}


def states(web: Web, user: str) -> dict[str, str]:
    return {job: j["state"] for job, j in jobs_of(web, user).items()}


def test_a_killed_exporters_jobs_are_lost_then_reconciled(
        start_exporter: Callable[..., Exporter], start_prometheus: Callable[..., Server],
        start_billing: Callable[..., Any], start_web: Callable[..., Web],
        processes: Processes, test_users: dict[str, UnixUser], tmp_path: Path) -> None:
    alice = test_users["alice"].name
    torch = stand_in_library("libtorch_cuda.so")
    stays = processes.python(test_users["alice"], "train_model.py", str(torch), "--token",
                             "s3cret", env={"GPUACCT_JOB": "stays"})
    ends = processes.python(test_users["alice"], "idle.py", env={"GPUACCT_JOB": "ends"})
    wait_for(lambda: "libtorch_cuda.so" in Path(f"/proc/{stays.pid}/maps").read_text())
    exporter = start_exporter({"exporter": {"interval_seconds": 0.25,
                                            "state_file": str(tmp_path / "state.json"),
                                            "nvml": {"backend": "off"}}})
    prometheus = start_prometheus([{"job_name": "gpuacct-exporter",
                                    "static_configs": [{"targets": [
                                        f"127.0.0.1:{exporter.port}"]}]}], interval="500ms")
    billing_port = free_port()
    start_billing({"billing": {"prometheus_url": prometheus.url, "window_seconds": 1,
                               "settle_seconds": 1.0,
                               "ledger": str(tmp_path / "billing.sqlite3"),
                               "jobs": {"lost_after_seconds": LOST_AFTER}}}, billing_port)
    web = start_web()  # its ledger is beside billing's, so is the job store it reads

    wait_for(lambda: states(web, alice) == {"stays": "running", "ends": "running"},
             timeout=30, what="both jobs running")
    job = jobs_of(web, alice)["stays"]
    assert (job["framework"], job["args"], job["node"]) == (
        "torch", f"{torch} --token <redacted>", f"127.0.0.1:{exporter.port}")

    os.kill(exporter.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: states(web, alice) == {"stays": "lost", "ends": "lost"}, timeout=30,
             what="the jobs lost")
    took = time.monotonic() - killed
    assert took >= LOST_AFTER  # not before the configured time
    page = requests.get(f"{web.url}/jobs", headers={"X-Remote-User": alice}, timeout=10).text
    assert page.count('class="job-lost"') == 2 and "s3cret" not in page
    metrics = requests.get(f"http://127.0.0.1:{billing_port}/metrics", timeout=10).text
    assert f'gpuacct_jobs{{node="127.0.0.1:{exporter.port}",state="lost"}} 2.0' in metrics

    ends.kill()  # ends while its node is away
    ends.wait()
    exporter.restart()
    wait_for(lambda: states(web, alice) == {"stays": "running", "ends": "finished"},
             timeout=30, what="the lost jobs reconciled")
    reconciled = jobs_of(web, alice)
    assert reconciled["stays"]["lost_at"] is None and reconciled["ends"]["ended"] is not None
    print(f"lost {took:.1f} s after the SIGKILL (lost_after_seconds {LOST_AFTER})")
