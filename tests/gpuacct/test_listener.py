"""`--web.config.file` (the exporter-toolkit format): TLS on the listeners, basic auth on
/metrics; a real Prometheus scrapes over TLS, verifying a throwaway CA."""

from __future__ import annotations

import base64
import platform
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from gpuacct import __version__
from ledger import Ledger
from stack.process import ManagedProcess, free_port
from stack.tls import Certificates, make_certificates
from tests.fixtures.servers import RUNNING, Server, promql, wait_for
from tests.fixtures.tls import plain_http_fails
from tests.gpuacct.test_build import checkout_revision

PASSWORD = "scrape-password"


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls", ["127.0.0.1", "localhost"])


def web_config(tmp_path: Path, certs: Certificates, **extra: object) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(certs.cert_file), "key_file": str(certs.key_file)},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(PASSWORD.encode(),
                                                          bcrypt.gensalt(rounds=4)).decode()},
        **extra}))
    return path


def get(url: str, ca: Path | None, user: str | None = None,
        password: str | None = None) -> tuple[int, str]:
    headers = {}
    if user is not None:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {pair}"
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10,
                                    context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., tuple[ManagedProcess, int]]]:
    started: list[ManagedProcess] = []

    def start(module: str, config: dict[str, object], web: Path,
              ready: Callable[[int], bool]) -> tuple[ManagedProcess, int]:
        port = free_port()
        path = tmp_path / f"{module}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = ManagedProcess(module, [sys.executable, "-m", module, "--config", str(path),
                                       "run", "--web.listen-address", f"127.0.0.1:{port}",
                                       "--web.config.file", str(web)],
                              tmp_path / f"{module}.log", "", cwd=tmp_path)
        started.append(proc)
        RUNNING.append(proc)
        proc.start()
        wait_for(lambda: ready(port) or not proc.running(), timeout=30, what=f"{module}")
        assert proc.running(), proc.log_tail()
        return proc, port

    yield start
    for proc in started:
        proc.stop()
        RUNNING.remove(proc)


def answers(ca: Path, path: str = "/metrics") -> Callable[[int], bool]:
    def check(port: int) -> bool:
        try:
            return get(f"https://127.0.0.1:{port}{path}", ca)[0] in (200, 401)
        except OSError:
            return False
    return check


def test_the_exporter_and_billing_serve_tls_and_prometheus_scrapes_them_verifying_the_ca(
        tmp_path: Path, certificates: Certificates, start_prometheus: Callable[..., Server],
        start_service: Callable[..., tuple[ManagedProcess, int]]) -> None:
    web = web_config(tmp_path, certificates)
    _, exporter = start_service("exporter", {"exporter": {
        "state_file": str(tmp_path / "state.json"), "nvml": {"backend": "off"}}}, web,
        answers(certificates.ca_file))
    (tmp_path / "billing").mkdir()
    _, billing = start_service("billing_engine", {"billing": {
        "ledger": str(tmp_path / "billing" / "ledger.sqlite3"),
        "prometheus_url": f"http://127.0.0.1:{free_port()}"}}, web,
        answers(certificates.ca_file))
    for port in (exporter, billing):
        url = f"https://127.0.0.1:{port}/metrics"
        assert plain_http_fails(port)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(url, None, "prometheus", PASSWORD)  # a CA the client does not know
        assert get(url, certificates.ca_file)[0] == 401
        assert get(url, certificates.ca_file, "prometheus", "wrong")[0] == 401
        assert get(url, certificates.ca_file, "nobody", PASSWORD)[0] == 401
        status, text = get(url, certificates.ca_file, "prometheus", PASSWORD)
        assert status == 200 and build_info() in text
        status, _ = get(f"https://127.0.0.1:{port}/", certificates.ca_file)
        assert status == 200  # the landing page: only /metrics asks for a password

    def job(name: str, port: int, password: str) -> dict[str, object]:
        return {"job_name": name, "scheme": "https",
                "tls_config": {"ca_file": str(certificates.ca_file)},
                "basic_auth": {"username": "prometheus", "password": password},
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    prometheus = start_prometheus([job("exporter", exporter, PASSWORD),
                                   job("billing", billing, PASSWORD),
                                   job("wrong-password", exporter, "wrong")], interval="500ms")
    wait_for(lambda: {s["metric"]["job"]: s["value"][1] for s in promql(prometheus.url, "up")}
             == {"exporter": "1", "billing": "1", "wrong-password": "0"}, timeout=30,
             what="both scraped over TLS, the wrong password refused")


def test_the_enforcer_serves_tls(
        tmp_path: Path, certificates: Certificates,
        start_service: Callable[..., tuple[ManagedProcess, int]]) -> None:
    web = web_config(tmp_path, certificates)
    _, enforcer = start_service("enforcer", {
        "enforcer": {"database": str(tmp_path / "enforcer.sqlite3"),
                     "nodes": ["http://127.0.0.1:9"]},
        "auth": {"webhook_token": "t" * 16, "node_master_key": "m" * 16}}, web,
        answers(certificates.ca_file, "/-/healthy"))
    assert plain_http_fails(enforcer, "/-/healthy")
    assert get(f"https://127.0.0.1:{enforcer}/-/healthy", certificates.ca_file)[0] == 200
    metrics = f"https://127.0.0.1:{enforcer}/metrics"
    assert get(metrics, certificates.ca_file, "prometheus", "wrong")[0] == 401
    status, text = get(metrics, certificates.ca_file, "prometheus", PASSWORD)
    assert status == 200 and build_info() in text


def test_the_web_serves_its_build_on_metrics_to_the_scrapers_alone(
        tmp_path: Path, certificates: Certificates,
        start_service: Callable[..., tuple[ManagedProcess, int]]) -> None:
    ledger = tmp_path / "billing" / "ledger.sqlite3"
    ledger.parent.mkdir()
    Ledger(ledger).close()
    _, web = start_service("web", {"billing": {"ledger": str(ledger)},
                                   "web": {"session_secret": "s" * 32}},
                           web_config(tmp_path, certificates), answers(certificates.ca_file))
    metrics = f"https://127.0.0.1:{web}/metrics"
    assert get(metrics, certificates.ca_file)[0] == 401
    assert get(metrics, certificates.ca_file, "prometheus", "wrong")[0] == 401
    status, text = get(metrics, certificates.ca_file, "prometheus", PASSWORD)
    assert status == 200 and build_info() in text


def build_info() -> str:
    """The sample every service's /metrics carries."""
    return (f'gpuacct_build_info{{pythonversion="{platform.python_version()}",'
            f'revision="{checkout_revision()}",version="{__version__}"}} 1.0')


@pytest.mark.parametrize(("config", "problem"), [
    ("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}",
     "cannot use the certificate /nonexistent.crt"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS99}", "min_version"),
    ("basic_auth_users: {alice: plain-text}", "basic_auth_users.alice: not a bcrypt hash"),
    ("tls_config: {}", "tls_config"),
    ("tls_server_config: [", "not valid YAML"),
])
def test_a_bad_web_config_is_named_and_nothing_starts(tmp_path: Path, config: str,
                                                      problem: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(config + "\n")
    port = free_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "exporter", "run", "--web.listen-address",
                           f"127.0.0.1:{port}", "--web.config.file", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 30
