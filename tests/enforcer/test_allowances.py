"""The allowances the enforcer sends its nodes: each user's GPU limits from the config, and what
each limited user holds on each node as the nodes' syncs said, outside the policy's version."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from enforcer.desired import HELD_SECONDS, Desired, allowances
from enforcer.payload import Notification
from enforcer.store import Store
from gpuacct.config import BillingSettings
from gpuacct.policy import Allowance, Held, NodePolicy
from tests.fixtures.enforcement import alert, notification

GIB = 1 << 30


def test_allowances_come_from_the_limits_theirs_over_the_defaults(tmp_path: Path) -> None:
    billing = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"), "limits": {"gpus": 4, "cpu_cores": 8},
        "user_limits": {"dave": {"gpus": 1}, "erin": {"gpu_memory_bytes": 10 * GIB}}})
    found = allowances(billing)
    assert found.default == Allowance(gpus=4)
    assert found.of("dave") == Allowance(gpus=1)
    assert found.of("erin") == Allowance(gpus=4, gpu_memory_bytes=10 * GIB)
    assert found.of("someone") == Allowance(gpus=4)


def test_holdings_ride_beside_the_version_and_go_with_a_silent_node(tmp_path: Path) -> None:
    store = Store(tmp_path / "enforcer.sqlite3")
    billing = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"), "user_limits": {"dave": {"gpus": 1}}})
    desired = Desired(store, limits=allowances(billing))
    version = desired.current().version
    desired.report_held("gpu01", {"dave": Held(gpus=1, gpu_memory_bytes=GIB),
                                  "frank": Held(gpus=3)})
    desired.report_held("gpu02", {"dave": Held(gpus=1)})
    desired.report_held("gpu03", {"dave": Held(gpus=5)}, now=time.time() - HELD_SECONDS - 1)
    policy = NodePolicy.model_validate_json(desired.dump())
    assert policy.version == version  # no new version: no push to every node for it
    # frank has no limit: nobody needs his count; gpu03 said nothing for longer than
    # HELD_SECONDS: what it held is no longer counted.
    assert policy.allowances.held == {"dave": {"gpu01": Held(gpus=1, gpu_memory_bytes=GIB),
                                               "gpu02": Held(gpus=1)}}
    assert policy.allowances.elsewhere("dave", "gpu02") == Held(gpus=1, gpu_memory_bytes=GIB)
    store.receive(Notification.model_validate(notification(alert("dave", "block", "X"))))
    assert desired.current().version > version


def test_a_node_ignores_what_a_newer_enforcer_adds_to_the_policy() -> None:
    """A control host a version ahead of its nodes keeps them working."""
    newer = ('{"version": 5, "users": {"dave": {"block": true, "colour": "red", "reasons": '
             '[{"alert": "A", "action": "block", "since": 1}]}}, "quota": {}}')
    policy = NodePolicy.model_validate_json(newer)
    assert policy.version == 5 and policy.users["dave"].block


def test_an_allowance_label_must_name_an_allowance() -> None:
    bad = alert("dave", "block", "GpuacctGpuLimitReached")
    bad["labels"]["allowance"] = "cpus"
    with pytest.raises(ValidationError, match=re.escape(
            "labels.allowance must be one of gpus, gpu_memory_bytes, got 'cpus'")):
        Notification.model_validate(notification(bad))
    good = alert("dave", "block", "GpuacctGpuLimitReached")
    good["labels"]["allowance"] = "gpus"
    [firing] = Notification.model_validate(notification(good)).alerts
    assert firing.reason().allowance == "gpus"


def test_a_policy_without_limits_has_nothing_an_older_node_would_refuse(
        tmp_path: Path) -> None:
    """Nodes before 0.2 refuse fields they do not know: the enforcer leaves out every field at
    its default, so they take the policy as long as no limit is configured."""
    store = Store(tmp_path / "enforcer.sqlite3")
    store.receive(Notification.model_validate(notification(alert("dave", "block", "X"))))
    body = json.loads(Desired(store).for_nodes())
    assert "allowances" not in body
    [reason] = body["users"]["dave"]["reasons"]
    assert "allowance" not in reason
    assert NodePolicy.model_validate(body) == Desired(store).current()
