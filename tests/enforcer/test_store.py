"""The enforcer's SQLite store: a failure inside a transaction leaves it usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enforcer.store import Store
from gpuacct.policy import NodeAction


def action(n: int) -> NodeAction:
    return NodeAction(id=f"report-{n}", at=1000.0 + n, user="gat-alice", action="terminate",
                      result="ok", detail=f"pid {n}", alert="BalanceExhausted")


def failing_after(count: int) -> Iterator[NodeAction]:
    for n in range(count):
        yield action(n)
    raise RuntimeError("the node's report broke off")


def test_record_actions_failing_half_way_writes_nothing_and_leaves_the_store_usable(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "enforcer.sqlite")
    with pytest.raises(RuntimeError, match="broke off"):
        store.record_actions("node-1", failing_after(2))
    assert store.audit() == []  # the two before the failure were rolled back
    assert not store.db.in_transaction
    store.record_actions("node-1", [action(7), action(8)])
    assert [e.detail for e in store.audit()] == ["pid 7", "pid 8"]
    store.close()
    reopened = Store(tmp_path / "enforcer.sqlite")
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
    assert reopened.db.execute("PRAGMA user_version").fetchone()[0] == 2
    reopened.close()
