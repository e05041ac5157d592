"""The control host's Prometheus and Alertmanager configs that `gpuacct-admin init` writes: valid
for promtool and amtool, and a real Prometheus on the generated scrape config finds a node
`node add` enrolled, scrapes it over TLS verified by the deployment's CA, and lets it go when
`node remove` takes it out."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gpuacct import http
from stack.process import ManagedProcess, free_port
from tests.admin.test_enrol import admin
from tests.fixtures.servers import RUNNING, Server, promql, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.root]


def test_the_generated_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    checked = subprocess.run(["promtool", "check", "config", str(etc / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rule files found" in checked.stdout  # gpuacct's rules, all checked
    checked = subprocess.run(["amtool", "check-config", str(etc / "alertmanager.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = yaml.safe_load((etc / "alertmanager.yml").read_text())
    [enforcer] = [r for r in routed["receivers"] if r["name"] == "enforcer"]
    hook = enforcer["webhook_configs"][0]
    assert hook["url"] == "https://127.0.0.1:9837/v1/alerts"
    token = hook["http_config"]["authorization"]["credentials_file"]
    assert Path(token).read_text() == (etc / "secrets" / "webhook-token").read_text()


def test_prometheus_scrapes_an_enrolled_node_over_tls_and_drops_a_removed_one(
        tmp_path: Path, start_prometheus: Callable[..., Server]) -> None:
    etc = tmp_path / "etc"
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    port = free_port()
    assert admin("node", "add", "gpu07", "127.0.0.1", "--port", str(port),
                 "--etc", str(etc)).returncode == 0
    bundle = etc / "nodes" / "gpu07"
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": str(bundle / "node.crt"), "key_file": str(bundle / "node.key")}}))
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"exporter": {
        "state_file": str(tmp_path / "state.json"), "backends": [],
        "actuator": {"enabled": False}}}))
    node = ManagedProcess(
        "exporter", [sys.executable, "-m", "exporter", "--config", str(config), "run",
                     "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web)],
        tmp_path / "exporter.log", f"https://127.0.0.1:{port}/metrics", cwd=tmp_path,
        ready_tls=http.client_context(etc / "tls" / "ca.crt"))
    RUNNING.append(node)
    try:
        node.start().wait_ready()
        generated = yaml.safe_load((etc / "prometheus.yml").read_text())
        [job] = [j for j in generated["scrape_configs"] if j["job_name"] == "gpuacct-exporter"]
        prometheus = start_prometheus([job], interval="1s")
        wait_for(lambda: promql(prometheus.url, f'up{{instance="127.0.0.1:{port}"}} == 1'),
                 timeout=30, what="the enrolled node scraped over TLS")

        def targets() -> list[str]:
            with urllib.request.urlopen(f"{prometheus.url}/api/v1/targets", timeout=10) as r:
                return [t["scrapeUrl"] for t in json.load(r)["data"]["activeTargets"]]
        assert targets() == [f"https://127.0.0.1:{port}/metrics"]
        assert admin("node", "remove", "gpu07", "--etc", str(etc)).returncode == 0
        wait_for(lambda: targets() == [], timeout=60, what="the removed node dropped")
    finally:
        node.stop()
        RUNNING.remove(node)
