"""The whole install, as docs/operators.md and docs/nodes.md tell it, on four hosts: a control
host and three GPU nodes, each in its own network namespace with its own address on a bridge,
its own /etc, /opt, /root and /run (tests/fixtures/hosts.py). The control host is installed
by deploy/install-control.sh from a wheelhouse (its namespace reaches no package index), each
node enrolled with `gpuacct-admin node add` and installed with the line it prints, from the
control host's wheelhouse. Systemd is not PID 1 here: every service runs as its unit says
(tests/fixtures/units.py): Debian's InfluxDB, Prometheus and Alertmanager with gpuacct's
drop-ins, gpuacct's billing, enforcer and web as the system user the install made, each node's
exporter as root.

What the test changes beyond the documented commands: the nodes' GPUs are simulated (the fake
NVML reads a file the test writes) and each node meters only its test users; the control
host's windows, scrapes and rule evaluations are shortened to seconds and its balances made
small, so that a balance runs out within the test."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.admin.test_enrol import admin
from tests.fixtures.enforcement import wait_until
from tests.fixtures.gpus import FakeGpus, device
from tests.fixtures.hosts import Host, Lab
from tests.fixtures.units import Running, start
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

REPO = Path(__file__).parents[2]
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.timeout(1200)]
CONTROL_SERVICES = ("influxdb.service", "prometheus.service", "prometheus-alertmanager.service",
                    "gpuacct-billing.service", "gpuacct-enforcer.service",
                    "gpuacct-web.service")
ENROL = "/root/gpuacct-enrol"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def edit(path: Path, change: dict[str, Any]) -> None:
    config = yaml.safe_load(path.read_text()) or {}
    for section, values in change.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def eventually(produce: Callable[[], str], wanted: str, timeout: float) -> str:
    """What `produce()` says once it says `wanted` (else the failure shows what it said)."""
    said = [""]

    def check() -> bool:
        said[0] = produce()
        return wanted in said[0]

    try:
        wait_until(check, timeout)
    except AssertionError:
        raise AssertionError(f"{wanted!r} not said within {timeout} s; last: {said[0]}") \
            from None
    return said[0]


def digests(host: Host) -> dict[str, str]:
    """Every secret, key and certificate of the deployment, by path."""
    found = {}
    for folder in ("/etc/gpuacct/secrets", "/etc/gpuacct/tls"):
        for file in sorted(host.path(folder).iterdir()):
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


class Deployment:
    def __init__(self, lab: Lab, logs: Path, users: dict[str, UnixUser]) -> None:
        self.lab, self.logs, self.users = lab, logs, users
        self.control = lab.host("control", 1, "control.lab")
        self.nodes = [lab.host(f"gpu0{i}", 10 + i) for i in (1, 2, 3)]
        self.running: dict[tuple[str, str], Running] = {}
        self.gpus: dict[str, FakeGpus] = {}

    def start(self, host: Host, unit: str) -> Running:
        self.running[(host.name, unit)] = running = start(host, unit, self.logs)
        return running

    def stop(self, host: Host, unit: str) -> None:
        self.running.pop((host.name, unit)).stop()

    def install_control(self, wheelhouse: Path) -> str:
        # The release copied onto the control host: its install script and wheelhouse.
        for kind in ("datasources", "dashboards"):  # a Grafana already on the host
            self.control.path(f"/etc/grafana/provisioning/{kind}").mkdir(parents=True)
        release = self.control.path("/root/gpuacct")
        release.mkdir()
        subprocess.run(["cp", "-r", str(wheelhouse), str(release / "wheelhouse")], check=True)
        subprocess.run(["cp", str(REPO / "deploy" / "install-control.sh"), str(release)],
                       check=True)
        out = ok(self.control.run(["/root/gpuacct/install-control.sh", "--host", "control.lab",
                                   "--host", self.control.address, "--wheelhouse",
                                   "/root/gpuacct/wheelhouse"], timeout=600))
        etc = self.control.path("/etc/gpuacct")
        edit(etc / "gpuacct.yaml", {
            "billing": {"window_seconds": 2, "settle_seconds": 1.2, "lease_seconds": 2,
                        "opening_balance": "0.10",
                        "thresholds": {"warning": "0.08", "limited": "0.04",
                                       "exhausted": "0"}},
            "allocator": {"grace_seconds": 2, "check_interval_seconds": 0.5}})
        edit(etc / "prometheus.yml", {"global": {"scrape_interval": "1s",
                                                 "evaluation_interval": "1s"}})
        return out

    def start_control(self) -> None:
        for unit in CONTROL_SERVICES:
            self.start(self.control, unit)
        wait_until(lambda: self.control.run(
            ["curl", "-sf", "--cacert", "/etc/gpuacct/tls/ca.crt",
             "https://control.lab:9838/-/healthy"]).returncode == 0, 60)

    def enrol(self, node: Host, users: list[UnixUser]) -> str:
        out = ok(self.control.run(["gpuacct-admin", "node", "add", node.name, node.address]))
        line = out.strip().splitlines()[-1].strip()
        bundle = f"/etc/gpuacct/nodes/{node.name}"
        assert line == (f"ssh root@{node.address} rm -rf {ENROL} && scp -rq {bundle} "
                        f"root@{node.address}:{ENROL} && ssh root@{node.address} "
                        f"{ENROL}/install-node.sh --bundle {ENROL}"), out
        # What scp -r does: the bundle's files, the wheelhouse it links to copied whole.
        source, to = self.control.path(bundle), node.path(ENROL)
        subprocess.run(["cp", "-r", "--no-dereference", str(source), str(to)], check=True)
        (to / "wheelhouse").unlink()
        wheels = self.control.path(str((source / "wheelhouse").readlink()))
        subprocess.run(["cp", "-r", str(wheels), str(to / "wheelhouse")], check=True)
        installed = ok(node.run([f"{ENROL}/install-node.sh", "--bundle", ENROL], timeout=600))
        # Simulated GPUs, and only the test's users metered on this machine's processes.
        self.gpus[node.name] = FakeGpus([device(0), device(1)],
                                        node.path("/etc/gpuacct/gpus.json"))
        edit(node.path("/etc/gpuacct/gpuacct.yaml"), {"exporter": {
            "backends": ["nvml"], "nvml": {"backend": "fake",
                                           "fake_file": "/etc/gpuacct/gpus.json"},
            "interval_seconds": 0.5, "only_users": [u.name for u in users],
            "actuator": {**yaml.safe_load(node.path("/etc/gpuacct/gpuacct.yaml").read_text())[
                "exporter"]["actuator"], "pull_interval_seconds": 1, "kill_grace_seconds": 2,
                "cpu_limiter": "off"}}})
        self.start(node, "gpuacct-exporter.service")
        return installed

    def gpuacct(self, node: Host, user: UnixUser, *args: str) -> subprocess.CompletedProcess[str]:
        return node.run(["gpuacct", *args], user=user.name)

    def on_gpu(self, processes: Processes, node: Host, user: UnixUser,
               gpu: int) -> subprocess.Popen[bytes]:
        proc = processes.python(user, "train.py", "600")
        wait_until_exec(proc, "train.py")
        self.gpus[node.name].put(gpu, proc.pid)
        self.gpus[node.name].save()
        return proc

    def hook(self, node: Host, user: UnixUser) -> dict[str, Any]:
        path = node.path(f"/run/gpuacct/users/{user.name}.json")
        try:
            return dict(yaml.safe_load(path.read_text()))
        except (OSError, TypeError, yaml.YAMLError):
            return {}

    def balances(self) -> str:
        return ok(self.control.run(["gpuacct-billing", "balances"]))

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.control.run(["curl", "-s", "--cacert", "/etc/gpuacct/tls/ca.crt", *args])


@pytest.fixture
def deployment(tmp_path: Path, test_users: dict[str, UnixUser]) -> Iterator[Deployment]:
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with Lab(tmp_path / "hosts") as lab:
            yield Deployment(lab, logs, test_users)
    finally:
        for log in sorted(logs.iterdir()):  # what each service said, if the test failed
            print(f"==> {log.name}\n{log.read_text()[-3000:]}")


def test_a_control_host_and_three_nodes_installed_as_the_docs_say(
        deployment: Deployment, test_users: dict[str, UnixUser], processes: Processes,
        tmp_path: Path) -> None:
    d = deployment
    alice, bob, dave, erin = (test_users[n] for n in ("alice", "bob", "dave", "erin"))
    gpu01, gpu02, gpu03 = d.nodes
    wheelhouse = tmp_path / "wheelhouse"
    ok(admin("wheelhouse", str(REPO), "--into", str(wheelhouse)))
    unreachable = d.control.run(["/usr/bin/python3", "-c", "import urllib.request; "
                                 "urllib.request.urlopen('https://pypi.org/simple/', "
                                 "timeout=5)"])
    assert unreachable.returncode != 0  # no package index from any host

    out = d.install_control(wheelhouse)
    assert "systemd is not running here" in out
    assert d.control.account("gpuacct").uid != 0
    # The units as installed, with their drop-ins and programs, as systemd would load them.
    verified = d.control.run(["systemd-analyze", "verify", "--man=no", *CONTROL_SERVICES,
                              "gpuacct-backup.service", "gpuacct-backup.timer"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (verified.stdout + verified.stderr).strip() == ""
    for kind in ("datasources", "dashboards"):
        placed = d.control.path(f"/etc/grafana/provisioning/{kind}/gpuacct.yml").read_text()
        assert "/etc/gpuacct/" in placed
    d.start_control()
    # InfluxDB lets in gpuacct alone, with the password the install made.
    query = ["http://127.0.0.1:8086/query", "--data-urlencode", "q=SHOW DATABASES", "-w",
             "%{http_code}"]
    assert d.control.run(["curl", "-s", *query]).stdout.endswith("401")
    password = d.control.path("/etc/gpuacct/secrets/influxdb-password").read_text().strip()
    assert '"gpuacct"' in ok(d.control.run(["curl", "-s", "-u", f"gpuacct:{password}",
                                            *query]))
    for node, users in ((gpu01, [bob]), (gpu02, [alice]), (gpu03, [dave, erin])):
        d.enrol(node, users)

    # node 2: alice's GPU work is billed, and when her balance runs out she is blocked there.
    first = d.on_gpu(processes, gpu02, alice, 0)
    wait_until(lambda: re.search(rf"{alice.name}\s", d.balances()), 60)
    wait_until(lambda: any(r.get("alert") == "GpuacctBalanceExhaustedBlockGpu"
                           for r in d.hook(gpu02, alice).get("reasons", [])), 90)
    assert d.hook(gpu02, alice)["block"] is True
    second = d.on_gpu(processes, gpu02, alice, 1)
    wait_until(lambda: second.poll() is not None, 30)  # a new GPU process is stopped
    assert first.poll() is None or first.returncode == 0

    # The daily backup, run as its unit says while billing runs.
    backup = d.start(d.control, "gpuacct-backup.service")
    assert backup.process.wait(120) == 0, backup.log.read_text()
    [taken] = d.control.path("/var/lib/gpuacct-backups").glob("gpuacct-*")
    assert {"ledger.sqlite3", "MANIFEST.json"} <= {p.name for p in taken.iterdir()}
    d.running.pop(("control", "gpuacct-backup.service"))

    # node 3: dave's reservation is granted, and enforced there on erin's process.
    granted = ok(d.gpuacct(gpu03, dave, "reserve", "1", "--for", "1h", "--node", "gpu03"))
    assert granted.startswith("granted: reservation 1, GPU "), granted
    gpu = int(granted.split("GPU ")[1].split()[0])
    hers = d.on_gpu(processes, gpu03, erin, gpu)
    wait_until(lambda: hers.poll() is not None, 30)

    # node 1: bob's balance, with no environment variable, through his node's daemon.
    ok(d.control.run(["gpuacct-billing", "account", "open", bob.name, "--balance", "25"]))
    assert re.search(rf"{bob.name}\s.*\s25(\.0+)?\s", d.balances()), d.balances()
    mine = eventually(lambda: ok(d.gpuacct(gpu01, bob, "balance")), "balance      25.00", 60)
    assert "no account yet" not in mine

    # Every service restarted: the same secrets, CA and certificates, the same admin
    # session, every node still trusted.
    before = digests(d.control)
    jar = "/root/cookies"
    login = d.curl("-c", jar, "https://control.lab:9838/login").stdout
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    assert csrf, login
    password = d.control.path("/etc/gpuacct/secrets/admin-password").read_text().strip()
    ok(d.curl("-b", jar, "-c", jar, "--data-urlencode", f"password={password}",
              "--data-urlencode", f"csrf={csrf.group(1)}", "--data-urlencode", "name=",
              "https://control.lab:9838/login"))
    page = d.curl("-b", jar, "-w", "%{http_code}", "https://control.lab:9838/admin").stdout
    assert page.endswith("200") and "Prices" in page, page[-500:]
    # The install run again (an upgrade in place) changes no secret, CA or edited config.
    config = d.control.path("/etc/gpuacct/gpuacct.yaml").read_text()
    again = ok(d.control.run(["/root/gpuacct/install-control.sh", "--host", "control.lab",
                              "--host", d.control.address, "--wheelhouse",
                              "/root/gpuacct/wheelhouse", "--no-start"], timeout=600))
    assert "kept: secrets/webhook-token" in again
    assert d.control.path("/etc/gpuacct/gpuacct.yaml").read_text() == config
    assert digests(d.control) == before
    for (host, unit) in list(d.running):
        d.stop(d.lab.hosts[[h.name for h in d.lab.hosts].index(host)], unit)
    d.start_control()
    for node in (gpu01, gpu02, gpu03):
        d.start(node, "gpuacct-exporter.service")
    assert digests(d.control) == before
    page = d.curl("-b", jar, "-w", "%{http_code}", "https://control.lab:9838/admin").stdout
    assert page.endswith("200") and "Prices" in page, page[-500:]
    wait_until(lambda: "gpu03" in d.gpuacct(gpu03, dave, "reservations").stdout, 60)
    wait_until(lambda: d.gpuacct(gpu02, alice, "balance").returncode == 0, 60)

    # node 1 removed: its key no longer lets it sync.
    exporter = d.running[("gpu01", "gpuacct-exporter.service")]
    seen = len(exporter.log.read_text())
    ok(d.control.run(["gpuacct-admin", "node", "remove", "gpu01"]))
    wait_until(lambda: "HTTP 401: {\"detail\":\"refused: node 'gpu01' is not enrolled" in
               exporter.log.read_text()[seen:], 60)
