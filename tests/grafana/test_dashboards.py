"""The Grafana dashboards: well formed, tied to the provisioned datasources, and every panel's
query answered with data by a real Prometheus and InfluxDB fed by the exporter (fake GPUs, real
processes of test users), the billing engine and the enforcer."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.alerting import rule_files
from stack.process import free_port
from stack.servers import influx_query
from tests.fixtures import dashboards
from tests.fixtures.enforcement import Cluster, alert, notification, wait_until
from tests.fixtures.gpus import RTX3090, device
from tests.fixtures.servers import Server, gpuacct_scrape_configs
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

ROOT = dashboards.ROOT


def test_dashboards_are_valid_json_with_unique_uids_and_panel_ids() -> None:
    found = dashboards.dashboards()
    assert set(found) == {"billing.json", "cluster.json", "operations.json", "user.json"}
    uids = Counter(d["uid"] for d in found.values())
    assert all(n == 1 for n in uids.values()), uids
    for name, dashboard in found.items():
        assert dashboard["title"].startswith("gpuacct / "), name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        titles = [p["title"] for p in dashboard["panels"]]
        assert len(titles) == len(set(titles)), name
        assert "gpuacct" in dashboard["tags"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    for name, dashboard in dashboards.dashboards().items():
        taken: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, panel["title"])
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, (name, panel["title"])
            taken |= cells


def _datasource_refs(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    refs = [(f"variable {v['name']}", v["datasource"])
            for v in dashboard["templating"]["list"] if isinstance(v.get("datasource"), dict)]
    for panel in dashboard["panels"]:
        refs.append((panel["title"], panel["datasource"]))
        refs += [(f"{panel['title']} {t['refId']}", t["datasource"]) for t in panel["targets"]]
    return refs


def test_every_datasource_is_a_variable_so_the_dashboards_import_into_any_grafana() -> None:
    """No datasource uid is written into a dashboard: each reference names a datasource
    variable of its type, which Grafana fills with the provisioned datasource or, imported
    elsewhere, with one of the operator's."""
    provisioned = dashboards.provisioned_datasources()
    assert set(provisioned.values()) == {"prometheus", "influxdb"}
    for name, dashboard in dashboards.dashboards().items():
        kinds = {v["name"]: v["query"] for v in dashboard["templating"]["list"]
                 if v["type"] == "datasource"}
        assert set(kinds.values()) <= set(provisioned.values()), name
        for where, ref in _datasource_refs(dashboard):
            variable = ref["uid"].removeprefix("${").removesuffix("}")
            assert ref["uid"] == f"${{{variable}}}", (name, where, ref)
            assert kinds.get(variable) == ref["type"], (name, where, ref)
        assert not set(provisioned) & set(json.dumps(dashboard).split('"')), name


def test_the_provider_loads_the_folder_compose_mounts_the_dashboards_into() -> None:
    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/gpuacct.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "compose/compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_every_recording_rule_is_used_by_a_dashboard_the_web_page_the_cli_or_an_alert() -> None:
    rules = yaml.safe_load((ROOT / "rules/recording.rules.yml").read_text())
    records = [r["record"] for g in rules["groups"] for r in g["rules"]]
    users = "\n".join(p.read_text() for p in [
        *dashboards.DASHBOARDS.glob("*.json"), *(ROOT / "web").rglob("*.py"),
        ROOT / "gpuacct/balance.py", *(ROOT / "rules").glob("*.rules.yml")])
    for record in records:
        used = users.replace(f"record: {record}", "")
        assert record in used, f"{record} is used by nothing"


@pytest.mark.integration
@pytest.mark.root
def test_every_panel_query_returns_data_from_the_real_servers(
        cluster: Cluster, start_prometheus: Callable[..., Server], influxdb: Server,
        processes: Processes, test_users: dict[str, UnixUser], tmp_path: Path,
        start_billing: Callable[[dict[str, Any], int], object]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    node = cluster.node("gpu01", devices=[device(0), device(1, name=RTX3090)],
                        cpu_limiter="auto")  # this machine's cgroups: the quota is real
    for user, job, gpu in ((alice, "train-a", 0), (bob, "train-b", 1)):
        proc = processes.python(user, "train.py", "300", env={"GPUACCT_JOB": job})
        wait_until_exec(proc, "train.py")
        node.gpus.put(gpu, proc.pid, used_memory=(gpu + 2) << 30)
    enforcer = cluster.enforcer([node])

    billing_port = free_port()
    prometheus = start_prometheus(
        gpuacct_scrape_configs(node.exporter.port, billing_port, enforcer.port),
        interval="500ms", extra={"rule_files": [str(p) for p in rule_files()]})
    influx_query(influxdb.url, 'CREATE DATABASE "gpuacct"', method="POST")
    start_billing({
        "billing": {"ledger": str(tmp_path / "ledger.sqlite3"), "prometheus_url": prometheus.url,
                    "window_seconds": 2, "settle_seconds": 1.2, "lease_seconds": 2,
                    # Below the warning (25): the rules have an alert firing for the panel.
                    "opening_balance": "20"},
        "influxdb": {"version": 1, "url": influxdb.url, "database": "gpuacct"}}, billing_port)
    status, _ = enforcer.post_alerts(notification(
        alert(alice.name, "block", "GpuacctBalanceLimitedBlockGpu"),
        alert(alice.name, "throttle", "GpuacctBalanceLimitedThrottleCpu", quota=50)))
    assert status == 200

    variables = {"user": alice.name, "instance": ".+"}
    deadline = time.monotonic() + 90
    while missing := dashboards.panels_without_data(
            prometheus.url, influxdb.url, "gpuacct", variables):
        assert time.monotonic() < deadline, "no data for:\n" + "\n".join(missing)
        time.sleep(2)
    print(f"{len(list(dashboards.queries()))} panel queries returned data")
    # The check itself can say no, and names a query a server refuses.
    for kind, text in (("prometheus", "gpuacct_no_such_metric"),
                       ("influxdb", 'SELECT sum("cost") FROM "no_such_measurement"')):
        empty = dashboards.Query("test", "test", kind, text, instant=False)
        assert not dashboards.returns_data(empty, prometheus.url, influxdb.url, "gpuacct", {})
    broken = dashboards.Query("test", "test", "prometheus", "sum(", instant=True)
    with pytest.raises(AssertionError, match="Prometheus refused it"):
        dashboards.returns_data(broken, prometheus.url, influxdb.url, "gpuacct", {})
    # Lift alice's quota again (it moved her process into a cgroup of its own).
    status, _ = enforcer.post_alerts(notification(
        alert(alice.name, "block", "GpuacctBalanceLimitedBlockGpu", status="resolved"),
        alert(alice.name, "throttle", "GpuacctBalanceLimitedThrottleCpu", quota=50,
              status="resolved")))
    assert status == 200
    wait_until(lambda: node.hook(alice.name) is None)


def test_substitution_puts_in_grafana_variables_whole_words_only() -> None:
    text = 'x{user="$user"}[$__rate_interval] $__range $username'
    assert dashboards.substitute(text, {"user": "alice"}) == (
        'x{user="alice"}[30s] 1h $username')
