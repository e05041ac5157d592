"""Usage limits as data: the billing engine's /metrics names each account's limits, theirs over
the defaults, and each Unix group's with its members; bad limits are named when the config is
read, and a GPU limit above the cluster's GPUs when the engine starts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from billing_engine.cli import warn_of_limits_above_the_cluster
from billing_engine.metrics import build_registry
from gpuacct.config import BillingSettings, ConfigError, settings_from_mapping
from gpuacct.promql import Prometheus
from ledger import Account, MetricsSnapshot
from tests.fixtures.servers import Server, promql, wait_for
from tests.fixtures.users import UnixUser


class Snapshots:
    def metrics_snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(accounts=[Account(name=name, balance=Decimal(50),
                                                 charged=Decimal(0), opened_at=0,
                                                 cost_since=Decimal(0))
                                         for name in ("alice", "bob")],
                               charged_to={"alice": "alice", "bob": "bob"},
                               members_this_month=[], last_window=None, outbox_backlog=0,
                               charged_total=Decimal(0), windows=0)

    def weekly_usage(self, start: float, end: float) -> list[object]:
        return []


def test_each_account_has_its_limits_over_the_defaults(tmp_path: Path) -> None:
    settings = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"), "limits": {"gpus": 2},
        "user_limits": {"bob": {"gpus": 4, "gpu_memory_bytes": 1 << 34, "cpu_cores": 2.5}}})
    registry = build_registry(settings, None, Snapshots())  # type: ignore[arg-type]
    limit = {(s.labels["user"], s.labels["resource"]): s.value
             for m in registry.collect() if m.name == "gpuacct_limit" for s in m.samples}
    assert limit == {("alice", "gpus"): 2, ("bob", "gpus"): 4,
                     ("bob", "gpu_memory_bytes"): 1 << 34, ("bob", "cpu_cores"): 2.5}


def test_a_user_the_config_names_has_limits_before_the_ledger_knows_them(
        tmp_path: Path) -> None:
    """dave has never been billed: his limit is published from his first process on."""
    settings = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"), "user_limits": {"dave": {"gpus": 1}}})
    registry = build_registry(settings, None, Snapshots())  # type: ignore[arg-type]
    limit = {(s.labels["user"], s.labels["resource"]): s.value
             for m in registry.collect() if m.name == "gpuacct_limit" for s in m.samples}
    assert limit == {("dave", "gpus"): 1}


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


@pytest.mark.root
def test_group_limits_name_the_members_nss_has(
        tmp_path: Path, lab_group: str, test_users: dict[str, UnixUser],
        caplog: pytest.LogCaptureFixture) -> None:
    """A group's members are its member list and the users whose primary group it is; a group
    NSS does not know has none, and is said once."""
    bob = test_users["bob"].name  # his primary group is gat-bob
    settings = BillingSettings.model_validate({
        "ledger": str(tmp_path / "l.sqlite3"),
        "group_limits": {lab_group: {"gpus": 2, "cpu_cores": 1.5}, bob: {"gpus": 1},
                         "gat-no-such-group": {"gpus": 1}}})
    registry = build_registry(settings, None, Snapshots())  # type: ignore[arg-type]
    for _ in range(2):
        families = {m.name: m for m in registry.collect()}
    limits = {(s.labels["group"], s.labels["resource"]): s.value
              for s in families["gpuacct_group_limit"].samples}
    assert limits == {(lab_group, "gpus"): 2, (lab_group, "cpu_cores"): 1.5, (bob, "gpus"): 1,
                      ("gat-no-such-group", "gpus"): 1}
    members = {(s.labels["group"], s.labels["user"])
               for s in families["gpuacct_group_member"].samples}
    assert members == {(lab_group, test_users["alice"].name),
                       (lab_group, test_users["carol"].name), (bob, bob)}
    said = [r.getMessage() for r in caplog.records if "gat-no-such-group" in r.getMessage()]
    assert said == ["billing.group_limits: there is no Unix group 'gat-no-such-group' (it has "
                    "no members)"]


@pytest.mark.integration
def test_a_gpu_limit_above_the_clusters_gpus_is_allowed_and_said(
        tmp_path: Path, static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server], caplog: pytest.LogCaptureFixture) -> None:
    target = static_metrics("".join(f'gpuacct_gpu_info{{gpu="{i}",gpu_uuid="G{i}"}} 1\n'
                                    for i in range(4)))
    prometheus = start_prometheus([{"job_name": "nodes", "static_configs": [
        {"targets": [target]}]}])
    wait_for(lambda: promql(prometheus.url, "gpuacct_gpu_info"))
    settings = settings_from_mapping({"billing": {
        "limits": {"gpus": 4}, "user_limits": {"bob": {"gpus": 8}},
        "group_limits": {"lab": {"gpus": 6}}}}).billing
    log = logging.getLogger("test")
    with caplog.at_level(logging.WARNING):
        warn_of_limits_above_the_cluster(settings, Prometheus(prometheus.url), log)
        warn_of_limits_above_the_cluster(settings, Prometheus("http://127.0.0.1:9"), log)
    assert [r.getMessage() for r in caplog.records] == [
        "billing.user_limits.bob.gpus = 8 is more than the 4 GPUs the cluster has now: it "
        "never binds",
        "billing.group_limits.lab.gpus = 6 is more than the 4 GPUs the cluster has now: it "
        "never binds",
        caplog.records[2].getMessage()]
    assert caplog.records[2].getMessage().startswith(
        "cannot compare the GPU limits with the cluster's GPUs:")
