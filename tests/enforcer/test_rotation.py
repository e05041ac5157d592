"""Secrets rotate without stopping anything: each step is a config change and a SIGHUP, and at
every step the enforcer's pushes, the node's pulls and Alertmanager's token still work. A
reload that cannot be used is refused whole, and the secrets in use stay. Over TLS, verified
against a throwaway CA, as a deployment runs it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gpuacct.signing import node_key
from stack.process import free_port
from tests.fixtures.enforcement import (
    MASTER,
    TOKEN,
    Cluster,
    Enforcer,
    EnforcingNode,
    alert,
    key_of,
    notification,
    reconfigure,
    reload_refused,
    wait_until,
)
from tests.fixtures.tls import Tls
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
NEW_MASTER, NEW_TOKEN = "next-master-key-for-tests", "next-webhook-token"


def enforced_at_every_step(enforcer: Enforcer, node: EnforcingNode, user: str, step: int,
                           token: str) -> None:
    """A new alert delivered with `token` reaches the node (a push), and the node's report of
    applying it reaches the audit (a pull)."""
    name = f"Step{step}"
    status, _ = enforcer.post_alerts(notification(alert(user, "notify", name)), token=token)
    assert status == 200, f"step {step}: the webhook refused {token!r}"
    wait_until(lambda: any(r["alert"] == name for r in (node.hook(user) or {}).get("reasons", [])),
               timeout=10)
    wait_until(lambda: any(e["node"] == node.name and e["alert"] == name
                           for e in enforcer.get(f"/v1/audit?user={user}", token)), timeout=10)


def test_node_keys_and_the_webhook_token_rotate_step_by_step_with_sighup(
        cluster: Cluster, tls: Tls, test_users: dict[str, UnixUser]) -> None:
    cluster.tls = tls
    user = test_users["alice"].name
    enforcer_port = free_port()
    node = cluster.node("gpu01", enforcer_port=enforcer_port, pull_seconds=0.5)
    enforcer = cluster.enforcer([node], port=enforcer_port)
    assert node.exporter.config is not None
    old_key, new_key = key_of("gpu01").decode(), node_key(NEW_MASTER.encode(), "gpu01").decode()
    enforced_at_every_step(enforcer, node, user, 0, TOKEN)

    steps: list[tuple[Any, dict[str, Any], str]] = [  # docs/enforcement.md, "Rotating the keys"
        (node.exporter, {"auth": {"node_key": [old_key, new_key]}}, TOKEN),
        (enforcer, {"auth": {"node_master_key": [NEW_MASTER, MASTER],
                             "webhook_token": [TOKEN, NEW_TOKEN]}}, NEW_TOKEN),
        (node.exporter, {"auth": {"node_key": new_key}}, TOKEN),
        (enforcer, {"auth": {"node_master_key": NEW_MASTER, "webhook_token": NEW_TOKEN}},
         NEW_TOKEN),
    ]
    for number, (service, change, token) in enumerate(steps, 1):
        assert service.config is not None
        reconfigure(service.process, service.config, change)
        enforced_at_every_step(enforcer, node, user, number, token)
    status, _ = enforcer.post_alerts(notification(alert(user, "notify", "Old")), token=TOKEN)
    assert status == 401, "the old webhook token is still accepted"

    # A reload that cannot be used changes nothing: the enforcer keeps its secrets, and so does
    # the node, and both say why.
    enforcer.config.write_text(enforcer.config.read_text().replace("webhook_token",
                                                                   "webhook_tokn"))
    config = yaml.safe_load(node.exporter.config.read_text())
    config["auth"]["node_key"] = {"env": "GPUACCT_NO_SUCH_VARIABLE"}
    node.exporter.config.write_text(yaml.safe_dump(config))
    reload_refused(enforcer.process, "auth.webhook_tokn: unknown key")
    reload_refused(node.exporter.process, "GPUACCT_NO_SUCH_VARIABLE is not set")
    enforced_at_every_step(enforcer, node, user, 5, NEW_TOKEN)
