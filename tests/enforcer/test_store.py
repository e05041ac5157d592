"""The enforcer's SQLite store: a failure inside a transaction leaves it usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from enforcer.payload import Notification
from enforcer.store import MIGRATIONS, Retention, Store
from gpuacct.policy import NodeAction, NodeActionKind, SyncRequest
from gpuacct.store import Target
from tests.fixtures.enforcement import alert, notification


def action(n: int) -> NodeAction:
    return NodeAction(id=f"report-{n}", at=1000.0 + n, user="gat-alice", action="terminate",
                      result="ok", detail=f"pid {n}", alert="BalanceExhausted")


def failing_after(count: int) -> Iterator[NodeAction]:
    for n in range(count):
        yield action(n)
    raise RuntimeError("the node's report broke off")


def test_record_actions_failing_half_way_writes_nothing_and_leaves_the_store_usable(
        store_target: Target) -> None:
    store = Store(store_target)
    with pytest.raises(RuntimeError, match="broke off"):
        store.record_actions("node-1", failing_after(2))
    assert store.audit() == []  # the two before the failure were rolled back
    assert not store.db.in_transaction
    store.record_actions("node-1", [action(7), action(8)])
    assert [e.detail for e in store.audit()] == ["pid 7", "pid 8"]
    store.close()
    reopened = Store(store_target)
    assert [e.detail for e in reopened.audit()] == ["pid 7", "pid 8"]
    reopened.close()


def test_a_store_from_before_schema_versions_opens_with_its_policy(tmp_path: Path) -> None:
    """A store made without `user_version` (version 0, tables present) keeps its data."""
    path = tmp_path / "enforcer.sqlite"
    store = Store(path)
    store.record_actions("node-1", [action(1)])
    store.db.execute("PRAGMA user_version = 0")
    store.close()
    reopened = Store(path)
    assert [e.detail for e in reopened.audit()] == ["pid 1"]
    assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    reopened.close()


def test_old_deliveries_and_audit_are_pruned_but_a_firing_alerts_deliveries_stay(
        store_target: Target) -> None:
    store = Store(store_target, Retention(delivery_days=30, audit_days=365))
    day = 86400.0
    old = 1_700_000_000.0
    firing = alert("gat-alice", "block", "BalanceExhausted")
    gone = alert("gat-bob", "notify", "BalanceLow")
    store.record_actions("node-1", [action(1)])  # at 1001: long ago
    store.receive(Notification.model_validate(notification(firing, gone)), now=old)
    assert [e.node for e in store.audit()] == ["enforcer", "enforcer"]  # pruned as it came
    store.receive(Notification.model_validate(notification({**gone, "status": "resolved"})),
                  now=old + day)
    assert store.prune(old + 10 * day) == (0, 0)  # deliveries younger than 30 days stay
    assert store.prune(old + 40 * day) == (2, 0)  # bob's firing and resolved, not alice's
    # Alice's alert, resent, is still known: nothing new is applied or audited twice.
    again = store.receive(Notification.model_validate(notification(firing)), now=old + 41 * day)
    assert (again.new, again.duplicate, again.changed) == (0, 1, False)
    assert store.prune(old + 400 * day) == (0, 3)  # the enforcer's three audit lines
    assert [f.user for f in store.firing()] == ["gat-alice"]
    store.close()


def test_a_node_report_of_an_unknown_action_is_refused_by_name() -> None:
    """NodeAction.action is a closed set (gpuacct.policy.NodeActionKind): the actuator cannot
    report, nor the enforcer store, an action nobody handles."""
    report = {"id": "r1", "at": 1.0, "user": "gat-alice", "action": "reboot", "result": "ok"}
    with pytest.raises(ValidationError) as refused:
        SyncRequest.model_validate({"node": "n1", "version": 0, "actions": [report]})
    (error,) = refused.value.errors()
    assert error["loc"] == ("actions", 0, "action") and "terminate" in error["msg"]
    assert set(get_args(NodeActionKind)) >= {"block", "kill", "terminate", "throttle", "notify"}
