"""compose/: a real Compose parser (Debian's docker-compose), pinned images, no anonymous Grafana
admin, the same rules and Alertmanager config as gpuacct-stack, configs gpuacct accepts, and a
secrets script that can run twice. No container is started: no registry is reachable here."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuacct.config import InfluxV2Settings, Settings, settings_from_mapping
from stack.alerting import RULES_DIR, render_alertmanager
from stack.process import ManagedProcess, free_port
from tests.fixtures.install import build_wheel
from tests.fixtures.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PACKAGES = ("gpuacct", "exporter", "billing_engine", "enforcer", "web", "stack", "rules")
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+$")  # a release tag: not latest, not a major alone
SECRETS = ("webhook-token", "node-master-key", "influxdb-password", "influxdb-token",
           "web-admin-password", "web-session-secret")


def compose(*args: str, directory: Path = COMPOSE, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    return subprocess.run(["docker-compose", "-f", str(directory / "compose.yaml"), *args],
                          capture_output=True, text=True, cwd=directory,
                          env={**environment, **env})


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose understands it, with variables filled in."""
    result = compose("config", GRAFANA_ADMIN_PASSWORD="from-the-environment")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_accepts_the_file(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {"prometheus", "alertmanager", "influxdb", "grafana",
                                         "billing", "enforcer", "web"}


def test_the_parser_is_strict_a_misspelt_key_is_refused(tmp_path: Path) -> None:
    shutil.copytree(COMPOSE, tmp_path / "compose")
    broken = tmp_path / "compose" / "compose.yaml"
    broken.write_text(broken.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    result = compose("config", "-q", directory=tmp_path / "compose", GRAFANA_ADMIN_PASSWORD="x")
    assert result.returncode != 0 and "healthchek" in result.stderr


def test_grafana_has_no_anonymous_admin_and_its_password_must_come_from_the_environment(
        resolved: dict[str, Any]) -> None:
    env = resolved["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "from-the-environment"
    missing = compose("config", "-q")
    assert missing.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in missing.stderr


def test_every_image_is_pinned_to_a_release(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        if "build" in service:  # gpuacct's own, from the Dockerfile
            assert service["build"]["dockerfile"] == "Dockerfile", name
            continue
        assert PINNED.match(service["image"]), f"{name}: {service['image']} is not pinned"
    [base] = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert re.match(r"^python:\d+\.\d+\.\d+-slim-bookworm$", base), base


def test_every_service_has_a_health_check_and_unauthenticated_ones_stay_on_loopback(
        resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        assert service["healthcheck"]["test"][0] == "CMD", name
    for name in ("prometheus", "alertmanager", "influxdb"):
        for port in resolved["services"][name].get("ports", []):
            # docker-compose 1.29 writes a port with a host address in the short form
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_prometheus_config_passes_promtool_with_the_real_rules(tmp_path: Path) -> None:
    text = (COMPOSE / "prometheus/prometheus.yml").read_text()
    assert "- /etc/prometheus/rules/*.rules.yml" in text  # ../rules, mounted read-only
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules", str(RULES_DIR)))
    result = subprocess.run(["promtool", "check", "config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rule files found" in result.stdout + result.stderr


def test_alertmanager_config_is_the_stacks_rendered_for_compose_and_amtool_accepts_it() -> None:
    shipped = yaml.safe_load((COMPOSE / "alertmanager/alertmanager.yml").read_text())
    assert shipped == render_alertmanager(RULES_DIR / "alertmanager.yml",
                                          "https://enforcer:9837/v1/alerts",
                                          Path("/run/secrets/webhook_token"), {},
                                          Path("/run/secrets/tls_ca"))
    result = subprocess.run(
        ["amtool", "check-config", str(COMPOSE / "alertmanager/alertmanager.yml")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_services_configs_are_valid_gpuacct_configs(tmp_path: Path) -> None:
    for name in SECRETS:
        (tmp_path / name.replace("-", "_")).write_text(f"{name}-value\n")
    (tmp_path / "admin-password-hash").write_text("$argon2id$hash\n")

    def load(service: str) -> Settings:
        text = (COMPOSE / "config" / f"{service}.yaml").read_text()
        text = text.replace("/tmp/admin-password-hash", f"{tmp_path}/admin-password-hash")
        text = text.replace("/run/secrets/", f"{tmp_path}/")
        return settings_from_mapping(yaml.safe_load(text), f"{service}.yaml")

    billing, enforcer, web = load("billing"), load("enforcer"), load("web")
    assert isinstance(billing.influxdb, InfluxV2Settings)
    assert billing.influxdb.token.get_secret_value() == "influxdb-token-value"
    assert billing.billing.ledger == web.billing.ledger  # the shared volume
    assert enforcer.auth.node_master_key is not None
    assert enforcer.auth.node_master_key[0].get_secret_value() == "node-master-key-value"
    assert web.web.enforcer_url == "https://enforcer:9837"
    assert web.auth.admin_password_hash is not None
    for settings in (billing, enforcer, web):  # every client verifies make-secrets.sh's CA
        assert settings.tls_client_config.ca_file == tmp_path / "tls_ca"


def test_make_secrets_runs_twice_and_changes_nothing_the_second_time(tmp_path: Path) -> None:
    script = COMPOSE / "make-secrets.sh"
    first = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "secrets made: " + " ".join(SECRETS) + " grafana-admin-password tls" in first.stdout
    made = {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir() if p.is_file()}
    env = (tmp_path / ".env").read_text()
    assert set(made) == set(SECRETS) and all(len(v.strip()) == 40 for v in made.values())
    assert len(set(made.values())) == len(made)
    tls = tmp_path / "secrets" / "tls"
    certificates = {p.name: p.read_bytes() for p in tls.iterdir()}
    assert set(certificates) == {"ca.crt", "ca.key", "server.crt", "server.key"}
    assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
    second = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True)
    assert "none changed" in second.stdout
    assert {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir()
            if p.is_file()} == made
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == certificates
    assert (tmp_path / ".env").read_text() == env
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=\w{40}$", env, re.M)
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_the_dockerfile_installs_a_wheel_with_every_package_and_template(tmp_path: Path) -> None:
    """What the Dockerfile's `pip install .` installs: built here the same way."""
    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    for package in PACKAGES:
        assert f"{package}/__main__.py" in names or f"{package}/__init__.py" in names
    rules = {p.name for p in (ROOT / "rules").glob("*.yml")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("rules/") and n.endswith(".yml")
            } == rules and "alertmanager.yml" in rules
    templates = {p.name for p in (ROOT / "web/templates").glob("*.html")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("web/templates/")} == templates
    copied = set(re.findall(r"^COPY (\w+) ", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied == set(PACKAGES)


def test_make_secrets_certificate_serves_the_services_names_verified_by_its_ca(
        tmp_path: Path) -> None:
    """The compose web config with make-secrets.sh's certificate, on a real gpuacct-billing:
    a client verifying the CA reaches it by the service's name, as Prometheus does."""
    made = subprocess.run([str(COMPOSE / "make-secrets.sh"), str(tmp_path)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    tls = tmp_path / "secrets" / "tls"
    web = tmp_path / "web-tls.yml"
    web.write_text((COMPOSE / "config" / "web-tls.yml").read_text()
                   .replace("/run/secrets/tls_cert", str(tls / "server.crt"))
                   .replace("/run/secrets/tls_key", str(tls / "server.key")))
    config = tmp_path / "billing.yaml"
    config.write_text(yaml.safe_dump({"billing": {"ledger": str(tmp_path / "ledger.sqlite3"),
                                                  "prometheus_url": "http://127.0.0.1:9"}}))
    port = free_port()
    billing = ManagedProcess("billing", [sys.executable, "-m", "billing_engine", "--config",
                                         str(config), "run", "--web.listen-address",
                                         f"127.0.0.1:{port}", "--web.config.file", str(web)],
                             tmp_path / "billing.log", "")
    billing.start()
    try:
        context = ssl.create_default_context(cafile=str(tls / "ca.crt"))

        def reached_as(name: str) -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=name):
                return True

        wait_for(lambda: billing.running() is False or _answers(reached_as), timeout=30,
                 what="billing over TLS")
        assert billing.running(), billing.log_tail()
        for name in ("billing", "enforcer", "web", "localhost"):
            assert reached_as(name)
        with pytest.raises(ssl.SSLCertVerificationError):
            reached_as("elsewhere.example.org")
    finally:
        billing.stop()


def _answers(check: Callable[[str], bool]) -> bool:
    try:
        return check("billing")
    except OSError:
        return False
