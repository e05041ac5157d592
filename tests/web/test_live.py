"""What the page takes from the other parts: burn rates and nodes from a real Prometheus, what
is enforced from a real gpuacct-enforcer, the nodes' GPUs from a real exporter on fake GPUs
with a real process of a test user on one of them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from tests.fixtures.enforcement import TOKEN, Cluster, alert, notification
from tests.fixtures.servers import Server, promql, wait_for
from tests.fixtures.users import Processes, UnixUser
from tests.web.conftest import Web

pytestmark = [pytest.mark.integration, pytest.mark.root]

# The recording rules' results for alice, as Prometheus would have them (the rules themselves
# are tested in tests/rules against the billing engine's metrics).
RULES = """\
user:gpuacct_cost_per_hour:rate1h{user="alice"} 3.5
user:gpuacct_seconds_until_exhausted:rate1h{user="alice"} 9000
"""


def test_pages_show_enforcement_burn_rate_and_who_is_on_which_gpu(
        start_web: Callable[..., Web], cluster: Cluster, static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    node = cluster.node("gpu01")
    holder = processes.python(test_users["alice"], "idle.py")
    node.gpus.put(0, holder.pid, used_memory=3 << 30)
    enforcer = cluster.enforcer([node])
    status, _ = enforcer.post_alerts(notification(
        alert("alice", "throttle", "GpuacctBalanceLimited", quota=50),
        alert("alice", "block", "GpuacctBalanceLimitedBlock")))
    assert status == 200
    prometheus = start_prometheus([
        {"job_name": "gpuacct-exporter", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{node.exporter.port}"]}]},
        {"job_name": "rules", "honor_labels": True,
         "static_configs": [{"targets": [static_metrics(RULES)]}]}], interval="500ms")
    wait_for(lambda: promql(prometheus.url, "gpuacct_gpu_process_memory_bytes")
             and promql(prometheus.url, "user:gpuacct_cost_per_hour:rate1h"))
    web = start_web(prometheus_url=prometheus.url, enforcer_url=enforcer.url,
                    auth={"webhook_token": TOKEN})
    session, _ = web.admin()

    page = session.get(f"{web.url}/users/alice", timeout=10).text
    assert "Spending 3.50 an hour over the last hour" in page
    assert "runs out in 2h 30m" in page
    assert "new GPU work is blocked (what was running goes on)" in page
    assert "CPU limited to 50% of one core" in page
    assert "alice: GpuacctBalanceLimited: because GpuacctBalanceLimited" in page
    overview = session.get(f"{web.url}/admin?sort=burn", timeout=10).text
    assert overview.index('href="/users/alice"') < overview.index('href="/users/bob"')
    assert "GPU blocked CPU 50%" in overview
    bob = session.get(f"{web.url}/users/bob", timeout=10).text
    assert "Spending 0.00 an hour" in bob and "<p>nothing</p>" in bob

    api = session.get(f"{web.url}/api/v1/accounts/alice", timeout=10).json()
    assert (api["cost_per_hour"], api["seconds_left"]) == ("3.50", 9000.0)
    assert api["enforcement"]["block"] and api["enforcement"]["cpu_quota_percent"] == 50

    # carol's reservation of GPU 1, bob queued behind her: on the nodes page, with a cancel.
    # (alice is blocked: she may have no new GPUs.)
    status, answer = enforcer.forward("alice", {"op": "reserve", "count": 1, "seconds": 60})
    assert status == 400 and "no new GPUs while new GPU work is blocked" in answer["detail"]
    assert enforcer.forward("carol", {"op": "reserve", "count": 1, "seconds": 3600,
                                      "gpus": [1]})[0] == 200
    assert enforcer.forward("bob", {"op": "reserve", "count": 2, "seconds": 600})[0] == 200
    wait_for(lambda: promql(prometheus.url, "gpuacct_node_info"))

    def nodes_page() -> str:
        text: str = session.get(f"{web.url}/admin/nodes", timeout=10).text
        return text
    # The page keeps what it asked the enforcer and Prometheus for a few seconds.
    wait_for(lambda: "(reservation 1)" in nodes_page() and ">gpu01<" in nodes_page(),
             timeout=30)
    nodes = nodes_page()
    assert f"127.0.0.1:{node.exporter.port}" in nodes and ">up<" in nodes
    assert ">gpu01<" in nodes and '">carol</a> until' in nodes and "(reservation 1)" in nodes
    assert 'action="/admin/reservations/1/cancel"' in nodes
    queue = nodes[nodes.index('id="queue"'):]
    assert ">bob</a>" in queue and ("(in 59m)" in queue or "(in 1h 00m)" in queue)
    assert f"{test_users['alice'].name}</a> (3.0 GiB)" in nodes
    [row] = session.get(f"{web.url}/api/v1/nodes", timeout=10).json()["nodes"]
    assert row["up"] and [g["users"] for g in row["gpus"]] == [
        {test_users["alice"].name: 3 << 30}, {}]


def test_parts_that_cannot_be_reached_are_named_not_an_error(
        start_web: Callable[..., Web]) -> None:
    web = start_web(prometheus_url="http://127.0.0.1:9", enforcer_url="http://127.0.0.1:9",
                    auth={"webhook_token": TOKEN})
    session, _ = web.admin()
    for path in ("/admin", "/users/alice", "/admin/nodes"):
        answer = session.get(f"{web.url}{path}", timeout=10)
        assert answer.status_code == 200, path
        assert "unknown: http://127.0.0.1:9" in answer.text, path
    nodes = session.get(f"{web.url}/api/v1/nodes", timeout=10).json()
    assert nodes["nodes"] == [] and "nodes unknown: http://127.0.0.1:9" in nodes["problem"]
    account = requests.get(f"{web.url}/api/v1/accounts/alice", timeout=10,
                           headers={"X-Remote-User": "alice"}).json()
    assert account["cost_per_hour"] is None and account["enforcement"] is None


def test_an_enforcer_without_the_token_to_ask_it_is_named(start_web: Callable[..., Web]) -> None:
    web = start_web(enforcer_url="http://127.0.0.1:9")
    session, _ = web.admin()
    page = session.get(f"{web.url}/users/alice", timeout=10).text
    assert "enforcement unknown: auth.webhook_token is not set" in page
