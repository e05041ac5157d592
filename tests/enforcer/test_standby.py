"""Two enforcers on one database (a SQLite file, then PostgreSQL), active and standby: the
standby serves nothing until the active one's lease ends, then acts on the state it left;
never both at once."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from tests.fixtures.enforcement import Cluster, Enforcer, alert, notification, wait_until
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
LEASE = 2.0


def answers(enforcer: Enforcer) -> bool:
    try:
        with urllib.request.urlopen(f"{enforcer.url}/-/healthy", timeout=1):
            return True
    except OSError:
        return False


def test_the_standby_takes_over_when_the_active_enforcer_dies_and_acts_on_its_state(
        cluster: Cluster, test_users: dict[str, UnixUser]) -> None:
    alice, bob = test_users["alice"].name, test_users["bob"].name
    node = cluster.node("n1")
    first = cluster.enforcer([node], lease_seconds=LEASE)
    second = cluster.enforcer([node], lease_seconds=LEASE, ready=False)
    time.sleep(2 * LEASE)
    assert not answers(second)  # the standby serves nothing while the active one renews
    assert first.post_alerts(notification(alert(alice, "block", "Block")))[0] == 200
    wait_until(lambda: (node.hook(alice) or {}).get("block"))

    for active, standby in ((first, second), (second, first)):
        os.kill(active.process.pid, signal.SIGKILL)
        active.process.popen.wait()  # type: ignore[union-attr]
        killed = time.monotonic()
        wait_until(lambda: answers(standby), timeout=3 * LEASE + 10)  # noqa: B023 (this turn's)
        took = time.monotonic() - killed
        assert took <= LEASE + 3.0, took  # the lease's end, a poll, the server's start
        # The standby acts on the state the other left: what is blocked stays blocked, and
        # an alert delivered twice (once to each) acts once.
        assert alice in standby.policy()["users"]
        active.process.start()  # back, as the standby now
        time.sleep(LEASE)
        assert not answers(active)
    status, body = first.post_alerts(notification(alert(bob, "throttle", "Slow", quota=50)))
    assert (status, body["new"]) == (200, 1)
    wait_until(lambda: (node.hook(bob) or {}).get("cpu_quota_percent") == 50)
    again = first.post_alerts(notification(alert(bob, "throttle", "Slow", quota=50)))[1]
    assert (again["new"], again["duplicate"]) == (0, 1)
    audit = [e for e in first.audit() if e["node"] == "enforcer"]
    assert [(e["user"], e["alert"]) for e in audit] == [(alice, "Block"), (bob, "Slow")]
