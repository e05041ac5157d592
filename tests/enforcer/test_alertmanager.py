"""The real Alertmanager, with gpuacct's own config (times compressed), delivering to the real
enforcer, which pushes to a real node."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stack.alerting import RULES_DIR, compress_time, render_alertmanager
from tests.fixtures.enforcement import TOKEN, Cluster, wait_until
from tests.fixtures.servers import Server
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]


def post_to_alertmanager(am: Server, user: str, name: str, action: str,
                         ends: datetime | None = None, **labels: str) -> None:
    alert: dict[str, Any] = {"labels": {"alertname": name, "user": user, "action": action,
                                        "severity": "warning", **labels},
                             "annotations": {"summary": f"{user}: {name}"}}
    if ends:
        alert["endsAt"] = ends.isoformat()
    request = urllib.request.Request(f"{am.url}/api/v2/alerts", data=json.dumps([alert]).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


def test_alertmanager_delivers_repeats_and_resolves_through_the_enforcer(
        tmp_path: Path, cluster: Cluster, test_users: dict[str, UnixUser],
        start_alertmanager: Callable[[dict[str, Any]], Server]) -> None:
    carol = test_users["carol"].name
    node = cluster.node("n1")
    enforcer = cluster.enforcer([node])
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = render_alertmanager(RULES_DIR / "alertmanager.yml", f"{enforcer.url}/v1/alerts",
                                 token, {})
    am = start_alertmanager(compress_time(config, 60))  # group_wait 5s -> 0.08s, repeat 5s
    post_to_alertmanager(am, carol, "GpuacctBalanceExhaustedThrottleCpu", "throttle",
                         cpu_quota_percent="10")
    wait_until(lambda: node.hook(carol), timeout=20)
    assert enforcer.policy()["users"][carol]["cpu_quota_percent"] == 10

    time.sleep(7)  # past one (compressed) repeat_interval: Alertmanager sends it again
    audit = enforcer.audit(carol)
    assert [(e["node"], e["action"]) for e in audit] == [
        ("enforcer", "throttle"), ("n1", "notify"), ("n1", "throttle")], audit
    with urllib.request.urlopen(f"{enforcer.url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'gpuacct_enforcer_alerts_received_total{outcome="duplicate"}' in metrics
    duplicates = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith('gpuacct_enforcer_alerts_received_total{outcome="dup'))
    assert duplicates >= 1  # the repeat came, and changed nothing

    post_to_alertmanager(am, carol, "GpuacctBalanceExhaustedThrottleCpu", "throttle",
                         ends=datetime.now(UTC) - timedelta(seconds=1), cpu_quota_percent="10")
    wait_until(lambda: node.hook(carol) is None, timeout=30)
    assert enforcer.policy()["users"] == {}
