"""Usage limits as data: the billing engine's /metrics names each account's limits, theirs over
the defaults; bad limits are named when the config is read."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from billing_engine.ledger import MetricsSnapshot
from billing_engine.metrics import build_registry
from gpuacct.config import BillingSettings, ConfigError, settings_from_mapping


class Snapshots:
    def metrics_snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(accounts=[("alice", Decimal(50), Decimal(0)),
                                         ("bob", Decimal(50), Decimal(0))],
                               last_window=None, outbox_backlog=0, charged_total=Decimal(0),
                               windows=0)


def test_each_account_has_its_limits_over_the_defaults(tmp_path: Path) -> None:
    settings = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"), "limits": {"gpus": 2},
        "user_limits": {"bob": {"gpus": 4, "gpu_memory_bytes": 1 << 34, "cpu_cores": 2.5}}})
    registry = build_registry(settings, None, Snapshots())  # type: ignore[arg-type]
    limit = {(s.labels["user"], s.labels["resource"]): s.value
             for m in registry.collect() if m.name == "gpuacct_limit" for s in m.samples}
    assert limit == {("alice", "gpus"): 2, ("bob", "gpus"): 4,
                     ("bob", "gpu_memory_bytes"): 1 << 34, ("bob", "cpu_cores"): 2.5}


@pytest.mark.parametrize(("limits", "problem"), [
    ({"gpus": -1}, "billing.limits.gpus: -1 is not valid"),
    ({"gpus": "many"}, "billing.limits.gpus: 'many' is not valid"),
    ({"gpu_memory_bytes": 1.5}, "billing.limits.gpu_memory_bytes: 1.5 is not valid"),
    ({"cpus": 2}, "billing.limits.cpus: unknown key"),
    ({"cpu_cores": 0}, "billing.limits.cpu_cores: 0 is not valid"),
])
def test_bad_limits_are_named(limits: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        settings_from_mapping({"billing": {"limits": limits}})
