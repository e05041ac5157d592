"""The enforcer and the exporter against a hostile client on the network or the machine:
bodies far too large, patterns that would backtrack for minutes, empty or short secrets. Each
is refused with the status that says why, changes nothing, and the service keeps answering
meanwhile."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from exporter.users.socket import Forwarder, UserSocketServer
from gpuacct.allocation import ALLOCATION_PATH
from gpuacct.login import LOGIN_PATH
from gpuacct.policy import SYNC_PATH
from tests.fixtures.enforcement import MASTER, TOKEN, Cluster, alert, notification
from tests.fixtures.exporter import Exporter
from tests.fixtures.hostile import MIB, post_huge_body, rss_kib

LISTENED = [SYNC_PATH, ALLOCATION_PATH, LOGIN_PATH, "/v1/alerts"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mib_body_is_refused_with_413_and_the_enforcer_barely_grows(
        cluster: Cluster, chunked: bool) -> None:
    enforcer = cluster.enforcer([])
    pid = enforcer.process.pid
    post_huge_body(enforcer.port, "/v1/alerts", MIB // 2, chunked,
                   {"Authorization": f"Bearer {TOKEN}"})  # warm: every route's code loaded
    before = rss_kib(pid)
    for path in LISTENED:
        assert post_huge_body(enforcer.port, path, 100 * MIB, chunked) == 413, path
    grown = rss_kib(pid) - before
    assert grown < 10 * 1024, f"grew {grown} KiB"
    # Nothing changed, and it still answers.
    assert enforcer.policy()["users"] == {}
    status, _ = enforcer.post_alerts(notification(alert("u1", "block", "X")))
    assert status == 200


def _healthy_seconds(url: str) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"{url}/-/healthy", timeout=5) as answer:
        assert answer.status == 200
    return time.monotonic() - start


def test_a_hostile_model_pattern_never_stalls_the_enforcer(cluster: Cluster) -> None:
    enforcer = cluster.enforcer([])
    hostile = {"op": "reserve", "count": 1, "seconds": 3600, "model": "(.+)+!"}
    answers: list[tuple[int, float]] = []

    def ask_hostile() -> None:
        for i in range(10):
            start = time.monotonic()
            status, _ = enforcer.forward(f"user{i}", hostile)
            answers.append((status, time.monotonic() - start))

    askers = [threading.Thread(target=ask_hostile) for _ in range(4)]
    for t in askers:
        t.start()
    health = []
    while any(t.is_alive() for t in askers):
        health.append(_healthy_seconds(enforcer.url))
        status, _ = enforcer.post_alerts(notification(alert("u1", "notify", "Low")))
        assert status == 200
    for t in askers:
        t.join()
    assert len(answers) == 40 and {s for s, _ in answers} == {400}
    assert max(s for _, s in answers) < 1.0, answers
    assert health and max(health) < 1.0, health
    # What RE2 cannot run in linear time is refused, naming why.
    status, body = enforcer.forward("alice", {**hostile, "model": r"(a)\1"})
    assert status == 400 and "RE2" in body["detail"], body
    status, body = enforcer.forward("alice", {**hostile, "model": "a" * 10_000})
    assert status == 400 and "at most 256 characters" in body["detail"], body
    assert enforcer.get(ALLOCATION_PATH)["entries"] == []


SECRETS: dict[str, dict[str, dict[str, Any]]] = {
    "auth.webhook_token": {"auth": {"webhook_token": ""}},
    "auth.node_master_key": {"auth": {"node_master_key": "short-key"}},
    "web.session_secret": {"web": {"session_secret": ["a-session-secret-of-length", ""]}},
    "auth.node_key": {"auth": {"node_key": {"file": "/dev/null"}}},
    "auth.admin_password_hash": {"auth": {"admin_password_hash": ""}},
    "influxdb.password": {"influxdb": {"password": ""}},
    "influxdb.token": {"influxdb": {"version": 2, "url": "http://127.0.0.1:1", "org": "lab",
                                    "bucket": "gpuacct", "token": ""}},
    "web.administrators.eve.password_hash": {"web": {"administrators": {
        "eve": {"password_hash": "not-a-hash", "role": "admin"}}}},
    "notifications.channels.mail.url": {"notifications": {"channels": {"mail": {"url": ""}}}},
}


@pytest.mark.parametrize("key", SECRETS)
def test_an_empty_or_short_secret_is_refused_at_start_naming_the_key(
        tmp_path: Path, key: str) -> None:
    config = tmp_path / "gpuacct.yaml"
    sections = SECRETS[key]
    base = {"auth": {"webhook_token": TOKEN, "node_master_key": MASTER}}
    config.write_text(yaml.safe_dump({**base, **sections, "auth": {
        **base["auth"], **sections.get("auth", {})}}))
    for service in ("enforcer", "exporter"):  # the control plane's and a node's
        started = subprocess.run([sys.executable, "-m", service, "--config", str(config),
                                  "run"], capture_output=True, text=True,
                                 timeout=60)
        assert started.returncode == 2, (service, started.stdout, started.stderr)
        lines = started.stderr.strip().splitlines()
        assert any(key in line for line in lines), (service, started.stderr)
        assert "Traceback" not in started.stderr and "short-key" not in started.stderr


def test_the_exporter_refuses_a_100_mib_body_with_413_and_barely_grows(
        start_exporter: Callable[..., Exporter]) -> None:
    exporter = start_exporter({"exporter": {"interval_seconds": 1}})
    pid = exporter.process.pid
    exporter.scrape()
    before = rss_kib(pid)
    for path in ("/v1/policy", "/metrics", "/"):
        assert post_huge_body(exporter.port, path, 100 * MIB) == 413, path
    grown = rss_kib(pid) - before
    assert grown < 10 * 1024, f"grew {grown} KiB"
    assert "gpuacct_exporter_build_info" in exporter.scrape()


def test_a_burst_of_users_connecting_at_once_is_queued_not_refused(tmp_path: Path) -> None:
    """The node's user socket before it accepts anything: 100 connections wait in its
    backlog (the default of 5 would refuse the 7th with EAGAIN)."""
    server = UserSocketServer(tmp_path / "user.sock", cast(Forwarder, None))
    clients = []
    try:
        for _ in range(100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            client.connect(str(tmp_path / "user.sock"))  # BlockingIOError past the backlog
            clients.append(client)
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert len(clients) == 100
