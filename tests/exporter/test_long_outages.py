"""Nothing lost on long outages: a job that ends while Prometheus is away for longer than
exporter.retention_seconds stays exposed until Prometheus, back, has scraped its final
counters; then it goes. Real exporter, real Prometheus stopped and started again, a real
process of a test user."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.exporter import Exporter
from tests.fixtures.servers import Server
from tests.fixtures.users import Processes, UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
RETENTION = 2.0


def query(prometheus: Server, expr: str) -> list[dict[str, object]]:
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        found: list[dict[str, object]] = json.load(answer)["data"]["result"]
    return found


def counter(text: str, user: str, job: str) -> float | None:
    prefix = f'gpuacct_job_cpu_seconds_total{{job="{job}",user="{user}"}} '
    return next((float(line.removeprefix(prefix)) for line in text.splitlines()
                 if line.startswith(prefix)), None)


def test_a_job_ending_while_prometheus_is_away_is_kept_until_it_is_scraped(
        start_exporter: Callable[..., Exporter], start_prometheus: Callable[..., Server],
        tmp_path: Path, processes: Processes, test_users: dict[str, UnixUser]) -> None:
    dave = test_users["dave"]
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.25, "retention_seconds": RETENTION,
        "state_file": str(tmp_path / "state.json"), "nvml": {"backend": "off"}}})
    prometheus = start_prometheus([{
        "job_name": "gpuacct-exporter", "params": {"scraper": ["prometheus-a"]},
        "honor_labels": True,
        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}], interval="1s")
    job = processes.python(dave, "train.py", "3", env={"GPUACCT_JOB": "short-run"})
    series = f'gpuacct_job_cpu_seconds_total{{user="{dave.name}",job="short-run"}}'
    deadline = time.monotonic() + 30
    while not query(prometheus, series):
        assert time.monotonic() < deadline, "Prometheus never scraped dave's job"
        time.sleep(0.2)

    prometheus.process.stop()  # away while the job ends
    job.wait(timeout=30)
    time.sleep(RETENTION * 3)  # well past the retention
    final = counter(exporter.scrape(), dave.name, "short-run")
    assert final is not None and final > 1.0, "the ended job was dropped before it was scraped"

    prometheus.process.start().wait_ready()  # back: it scrapes the final value, then it goes
    deadline = time.monotonic() + 30
    while True:
        seen = query(prometheus, series)
        if seen and float(seen[0]["value"][1]) == final:  # type: ignore[index]
            break
        assert time.monotonic() < deadline, f"Prometheus never got the final {final}: {seen}"
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while counter(exporter.scrape(), dave.name, "short-run") is not None:
        assert time.monotonic() < deadline, "the job stayed after it was scraped"
        time.sleep(0.2)
