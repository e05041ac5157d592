"""The enforcer's webhook as Alertmanager and careless operators would call it, with real nodes
behind it: bad payloads, tokens, duplicates, restarts, a node that was away."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.fixtures.enforcement import MASTER, TOKEN, Cluster, alert, notification, wait_until
from tests.fixtures.exporter import promtool_check_metrics
from tests.fixtures.servers import Server, promql, wait_for
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
Users = dict[str, UnixUser]


@pytest.mark.parametrize(("raw", "problem"), [
    (b"{not json", "not valid JSON"),
    (b'{"version": "4", "status": "firing"}', "alerts: missing"),
    (b'{"version": "3", "status": "firing", "alerts": []}', "version"),
    (None, "labels.user"),
    (None, "cpu_quota_percent"),
    (None, "labels.action"),
    (None, "startsAt"),
])
def test_a_bad_payload_gets_400_naming_the_problem_and_changes_nothing(
        cluster: Cluster, raw: bytes | None, problem: str) -> None:
    enforcer = cluster.enforcer([])
    bad = {"labels.user": alert("", "block", "X"),
           "cpu_quota_percent": alert("u1", "throttle", "X"),
           "labels.action": alert("u1", "explode", "X"),
           "startsAt": {**alert("u1", "block", "X"), "startsAt": "yesterday"}}
    status, body = enforcer.post_alerts(notification(bad[problem]) if raw is None else None,
                                        raw=raw)
    assert status == 400
    assert problem in body["detail"], body
    policy = enforcer.policy()
    assert (policy["version"], policy["users"]) == (0, {})
    assert enforcer.audit() == []


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_no_or_a_wrong_token_gets_401(cluster: Cluster, token: str | None) -> None:
    enforcer = cluster.enforcer([])
    status, body = enforcer.post_alerts(notification(alert("u1", "block", "X")), token=token)
    assert status == 401
    assert "bearer token" in body["detail"]
    assert enforcer.policy()["users"] == {}


def test_during_a_rotation_either_token_is_accepted(cluster: Cluster) -> None:
    enforcer = cluster.enforcer([], sections={"auth": {
        "webhook_token": [TOKEN, "the-next-webhook-token"], "node_master_key": MASTER}})
    for user, token in (("u1", TOKEN), ("u2", "the-next-webhook-token")):
        status, _ = enforcer.post_alerts(notification(alert(user, "block", "X")), token=token)
        assert status == 200, token
    status, _ = enforcer.post_alerts(notification(alert("u3", "block", "X")), token="old")
    assert status == 401
    assert set(enforcer.policy()["users"]) == {"u1", "u2"}


def test_duplicated_and_repeated_deliveries_act_and_notify_once(
        cluster: Cluster, test_users: Users) -> None:
    alice = test_users["alice"].name
    node = cluster.node("n1")
    enforcer = cluster.enforcer([node])
    payload = notification(alert(alice, "notify", "GpuacctBalanceLow"),
                           alert(alice, "block", "GpuacctBalanceLimitedBlockGpu"))
    status, body = enforcer.post_alerts(payload)
    assert (status, body["new"], body["duplicate"]) == (200, 2, 0)
    wait_until(lambda: node.hook(alice))
    for _ in range(3):  # Alertmanager's retry, and its repeat_interval re-sends
        status, body = enforcer.post_alerts(payload)
        assert (status, body["new"], body["duplicate"]) == (200, 0, 2)
    time.sleep(1.0)
    audit = enforcer.audit(alice)
    on_node = [(e["action"], e["alert"]) for e in audit if e["node"] == "n1"]
    assert sorted(on_node) == [("block", "GpuacctBalanceLimitedBlockGpu"),
                               ("notify", "GpuacctBalanceLimitedBlockGpu"),
                               ("notify", "GpuacctBalanceLow")], audit
    assert len([e for e in audit if e["node"] == "enforcer"]) == 2
    hook = node.hook(alice)
    assert hook is not None and hook["block"] and not hook["kill"]

    # Resolved: the block lifts on the node; the notice alone stays.
    status, _ = enforcer.post_alerts(notification(
        alert(alice, "block", "GpuacctBalanceLimitedBlockGpu", status="resolved")))
    assert status == 200
    wait_until(lambda: not (node.hook(alice) or {}).get("block", True))
    assert [r["alert"] for r in enforcer.policy()["users"][alice]["reasons"]] == [
        "GpuacctBalanceLow"]


def test_a_resolution_that_overtakes_its_alert_wins(cluster: Cluster) -> None:
    enforcer = cluster.enforcer([])
    enforcer.post_alerts(notification(alert("u1", "block", "B", status="resolved")))
    enforcer.post_alerts(notification(alert("u1", "block", "B")))
    assert enforcer.policy()["users"] == {}


def test_restart_keeps_state_and_audit_and_a_returning_node_pulls_the_policy(
        cluster: Cluster, test_users: Users) -> None:
    bob = test_users["bob"].name
    enforcer = cluster.enforcer([])
    away = cluster.node("away", enforcer_port=enforcer.port, pull_seconds=2.0)
    away.exporter.process.stop()
    enforcer.post_alerts(notification(alert(bob, "throttle", "Throttle", quota=50)))
    policy, audit = enforcer.policy(), enforcer.audit()
    enforcer.process.stop()
    enforcer.process.start().wait_ready()
    assert enforcer.policy() == policy
    assert enforcer.audit() == audit

    away.exporter.restart()
    took = wait_until(lambda: away.hook(bob), timeout=10)
    assert took < 2.0 + 1.0  # within one pull period
    assert away.hook(bob)["cpu_quota_percent"] == 50  # type: ignore[index]
    # What the node did reaches the audit log with its next pull.
    wait_until(lambda: any(e["node"] == "away" for e in enforcer.audit(bob)), timeout=10)


def test_nodes_discovered_from_prometheus_get_the_policy_and_export_it(
        cluster: Cluster, test_users: Users, start_prometheus: Callable[..., Server]) -> None:
    bob = test_users["bob"].name
    node = cluster.node("discovered")
    prometheus = start_prometheus([{"job_name": "gpuacct-exporter", "honor_labels": True,
                                    "static_configs": [{"targets": [
                                        f"127.0.0.1:{node.exporter.port}"]}]}])
    wait_for(lambda: promql(prometheus.url, 'up{job="gpuacct-exporter"} == 1'))
    enforcer = cluster.enforcer([], prometheus_url=prometheus.url,
                                discovery_interval_seconds=1)
    enforcer.post_alerts(notification(alert(bob, "block", "Block"),
                                      alert(bob, "throttle", "Throttle", quota=50)))
    wait_until(lambda: node.hook(bob))
    text = node.exporter.scrape()
    assert f'gpuacct_node_user_blocked{{user="{bob}"}} 1.0' in text
    # This node has no CPU limiter: the throttle is `unsupported` and no quota is claimed.
    assert "gpuacct_node_user_cpu_quota_ratio{" not in text
    assert 'gpuacct_enforcement_actions_total{action="block",result="ok"} 1.0' in text
    assert 'gpuacct_enforcement_actions_total{action="throttle",result="unsupported"} 1.0' in text
    checked = promtool_check_metrics(text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with urllib.request.urlopen(f"{enforcer.url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    node_url = f"http://127.0.0.1:{node.exporter.port}"
    assert f'gpuacct_enforcer_node_reachable{{node="{node_url}"}} 1.0' in metrics
    assert promtool_check_metrics(metrics).returncode == 0
