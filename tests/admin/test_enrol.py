"""`gpuacct-admin init` and `node add` / `node remove` as an operator runs them on the control
host: the deployment's CA, certificate and secrets made once and kept, a node's key and
certificate from them, its scrape entry, and a removed node refused by the real enforcer."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from gpuacct.config import InfluxV1Settings, load_settings
from gpuacct.policy import SyncRequest
from gpuacct.signing import sign
from stack.process import free_port
from tests.enforcer.test_signed_requests import send
from tests.fixtures.enforcement import Cluster, key_of
from tests.fixtures.servers import Server, wait_for
from web.auth import verify_password

pytestmark = [pytest.mark.root]


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "admin", *args], capture_output=True,
                          text=True, timeout=120)


def files(etc: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(etc)): (p.stat().st_mode & 0o777, p.read_bytes())
            for p in sorted(etc.rglob("*")) if p.is_file()}


def test_init_makes_the_deployment_once_and_keeps_it(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "gpuacct"
    first = admin("init", "--etc", str(etc), "--host", "control.lab", "--host", "10.0.0.1")
    assert first.returncode == 0, first.stderr
    assert "kept: nothing" in first.stdout
    made = files(etc)
    assert {name: mode for name, (mode, _) in made.items()} == {
        "gpuacct.yaml": 0o640, "web.yml": 0o640, "nodes/nodes.yml": 0o644,
        "secrets/webhook-token": 0o640, "secrets/node-master-key": 0o640,
        "secrets/session-secret": 0o640, "secrets/admin-password": 0o600,
        "tls/ca.crt": 0o644, "tls/ca.key": 0o600,
        "tls/server.crt": 0o644, "tls/server.key": 0o640, "prometheus.yml": 0o644,
        "alertmanager.yml": 0o644, "secrets/alertmanager-webhook-token": 0o640,
        "rules/enforcement.rules.yml": 0o644, "rules/operations.rules.yml": 0o644,
        "rules/recording.rules.yml": 0o644, "secrets/influxdb-password": 0o640,
        "secrets/grafana-influxdb-password": 0o640,
        **{f"grafana/dashboards/{name}.json": 0o644
           for name in ("billing", "cluster", "operations", "user")},
        "grafana/provisioning/datasources/gpuacct.yml": 0o644,
        "grafana/provisioning/dashboards/gpuacct.yml": 0o644}
    assert (etc / "secrets").stat().st_mode & 0o777 == 0o711  # not listed; each file its own
    again = admin("init", "--etc", str(etc), "--host", "control.lab", "--host", "10.0.0.1")
    assert again.returncode == 0 and "made: nothing" in again.stdout, again.stdout
    assert files(etc) == made  # no secret, no CA, no certificate changed
    settings = load_settings(str(etc / "gpuacct.yaml"))  # every secret it names resolves
    assert settings.enforcer.enrolled_nodes_file == etc / "nodes" / "nodes.yml"
    influx = settings.influxdb
    assert isinstance(influx, InfluxV1Settings) and influx.password is not None
    assert influx.password.get_secret_value() == \
        (etc / "secrets" / "influxdb-password").read_text().strip()
    password = (etc / "secrets" / "admin-password").read_text().strip()
    assert settings.auth.admin_password_hash is not None and verify_password(
        password, settings.auth.admin_password_hash.get_secret_value())  # the web's admin
    server = x509.load_pem_x509_certificate((etc / "tls" / "server.crt").read_bytes())
    server.verify_directly_issued_by(
        x509.load_pem_x509_certificate((etc / "tls" / "ca.crt").read_bytes()))
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"control.lab", "localhost"} <= set(names.get_values_for_type(x509.DNSName))


def test_a_node_is_enrolled_with_its_own_key_and_certificate_then_removed(
        tmp_path: Path) -> None:
    etc = tmp_path / "gpuacct"
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    added = admin("node", "add", "gpu07", "10.0.0.17", "--etc", str(etc))
    assert added.returncode == 0, added.stderr
    assert "deploy/install-node.sh --bundle /root/gpuacct-enrol" in added.stdout
    assert (etc / "nodes" / "gpu07" / "enforcer-url").read_text() == "https://control.lab:9837\n"
    bundle = etc / "nodes" / "gpu07"
    assert bundle.stat().st_mode & 0o777 == 0o700
    assert yaml.safe_load((etc / "nodes" / "nodes.yml").read_text()) == [
        {"targets": ["10.0.0.17:9835"], "labels": {"__gpuacct_node": "gpu07"}}]
    derived = subprocess.run([sys.executable, "-m", "enforcer", "--config",
                              str(etc / "gpuacct.yaml"), "node-key", "gpu07"],
                             capture_output=True, text=True, timeout=60)
    assert (bundle / "node-key").read_text() == derived.stdout  # the enforcer's own derivation
    assert (bundle / "node-key").stat().st_mode & 0o777 == 0o600
    node = x509.load_pem_x509_certificate((bundle / "node.crt").read_bytes())
    node.verify_directly_issued_by(x509.load_pem_x509_certificate((bundle / "ca.crt").read_bytes()))
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gpu07"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.17"]

    assert admin("node", "add", "gpu07", "10.0.0.17", "--etc", str(etc)).returncode == 0
    moved = admin("node", "add", "gpu07", "10.0.0.99", "--etc", str(etc))
    assert moved.returncode == 2 and "gpu07 is enrolled at ['10.0.0.17:9835']" in moved.stderr
    assert admin("node", "add", "gpu08", "10.0.0.18", "--etc", str(etc)).returncode == 0
    removed = admin("node", "remove", "gpu07", "--etc", str(etc))
    assert removed.returncode == 0, removed.stderr
    assert not bundle.exists()
    assert yaml.safe_load((etc / "nodes" / "nodes.yml").read_text()) == [
        {"targets": ["10.0.0.18:9835"], "labels": {"__gpuacct_node": "gpu08"}}]


@pytest.mark.parametrize(("args", "problem"), [
    (["init"], "name the control host"),
    (["init", "--host", "not a host!"], "neither an IP address nor a host name"),
    (["node", "add", "gpu_01", "10.0.0.1"], "not a node name"),
    (["node", "add", "gpu01", "10.0.0.1;rm"], "neither an IP address nor a host name"),
    (["node", "add", "gpu01", "10.0.0.1", "--port", "70000"], "not a port"),
    (["node", "remove", "nobody"], "no node 'nobody' is enrolled"),
])
def test_bad_input_is_named(tmp_path: Path, args: list[str], problem: str) -> None:
    etc = tmp_path / "gpuacct"
    if args[0] == "node":
        assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    done = admin(*args, "--etc", str(etc))
    assert done.returncode == 2 and problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_node_add_before_init_says_what_to_do(tmp_path: Path) -> None:
    done = admin("node", "add", "gpu01", "10.0.0.1", "--etc", str(tmp_path / "none"))
    assert done.returncode == 2 and "gpuacct-admin init" in done.stderr, done.stderr


@pytest.mark.integration
def test_the_enforcer_refuses_a_node_once_it_is_removed(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    inventory = tmp_path / "nodes.yml"
    inventory.write_text(yaml.safe_dump([
        {"targets": ["127.0.0.1:1"], "labels": {"__gpuacct_node": "gpu-a"}},
        {"targets": ["127.0.0.1:2"], "labels": {"__gpuacct_node": "gpu-b"}}]))
    enforcer = cluster.enforcer([], urls=["http://127.0.0.1:9"],
                                enrolled_nodes_file=str(inventory))

    def sync(node: str) -> tuple[int, str]:
        body = SyncRequest(node=node, version=0, actions=()).model_dump_json().encode()
        return send(f"{enforcer.url}/v1/sync", "POST", body,
                    {"Content-Type": "application/json",
                     **sign(key_of(node), node, "POST", "/v1/sync", body)})

    assert sync("gpu-a")[0] == 200 and sync("gpu-b")[0] == 200
    status, answer = sync("gpu-c")  # a key the master derives, but never enrolled
    assert status == 401 and "node 'gpu-c' is not enrolled" in answer, answer
    inventory.write_text(yaml.safe_dump([
        {"targets": ["127.0.0.1:2"], "labels": {"__gpuacct_node": "gpu-b"}}]))  # gpu-a removed
    status, answer = sync("gpu-a")
    assert status == 401 and "node 'gpu-a' is not enrolled" in answer, answer
    assert sync("gpu-b")[0] == 200
    inventory.write_text("{not: a list")  # a broken inventory lets nobody in
    assert sync("gpu-b")[0] == 401


@pytest.mark.integration
def test_prometheus_scrapes_the_inventory_without_the_name_label_on_the_series(
        tmp_path: Path, start_prometheus: Callable[..., Server]) -> None:
    etc = tmp_path / "gpuacct"
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    port = free_port()  # nothing answers there: the target is discovered, and down
    assert admin("node", "add", "gpu07", "127.0.0.1", "--port", str(port),
                 "--etc", str(etc)).returncode == 0
    prometheus = start_prometheus([{
        "job_name": "gpuacct-exporter", "honor_labels": True,
        "file_sd_configs": [{"files": [str(etc / "nodes" / "nodes.yml")]}]}], interval="500ms")

    def target() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/targets", timeout=5) as answer:
            found = json.loads(answer.read())["data"]["activeTargets"]
        return found[0] if found else None
    found = wait_for(target, timeout=20, what="the enrolled node as a target")
    assert found["discoveredLabels"]["__gpuacct_node"] == "gpu07"
    assert found["labels"] == {"instance": f"127.0.0.1:{port}", "job": "gpuacct-exporter"}
