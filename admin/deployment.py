"""The deployment's own trust, kept in /etc/gpuacct on the control host: its CA (the key never
leaves this folder), the control host's certificate, the secrets the services share, the config
that names them, and the node inventory: a Prometheus file_sd list (`nodes/nodes.yml`) that
Prometheus scrapes and the enforcer reads to know which nodes may sign (a node removed from it
can no longer sync; enforcer.inventory). `init` makes what is missing and keeps what exists;
`node add` enrols a node (its key, its certificate, its entry) and writes the bundle its
install takes."""

from __future__ import annotations

import grp
import ipaddress
import os
import re
import secrets
import shutil
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admin import influxdb
from admin.backup import AdminError
from enforcer.inventory import NODE_LABEL
from gpuacct.files import write_atomically
from gpuacct.signing import node_key
from stack.alerting import RULES_DIR, render_alertmanager, rule_files
from stack.tls import issue, new_ca, serves, write_cert, write_key
from web.auth import hash_password

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")  # a host name, as nodes are named
HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
EXPORTER_PORT = 9835
SERVICE_PORTS = {"billing": 9836, "enforcer": 9837, "web": 9838}
PROMETHEUS, ALERTMANAGER = "127.0.0.1:9090", "127.0.0.1:9093"
MONITORING = "prometheus"  # the user Debian's Prometheus and Alertmanager run as
SERVICES = "gpuacct"  # the control host's services' user and group (deploy/systemd)
SECRETS = ("webhook-token", "node-master-key", "session-secret", influxdb.PASSWORD)
GRAFANA = "grafana"  # the user Debian-style Grafana installs run as
ADMIN_PASSWORD = "admin-password"  # the web's administrator (the operator reads it)


@dataclass(frozen=True)
class Etc:
    """/etc/gpuacct, or the same layout under another folder (an install into a root)."""

    path: Path

    @property
    def tls(self) -> Path:
        return self.path / "tls"

    @property
    def secrets(self) -> Path:
        return self.path / "secrets"

    @property
    def nodes(self) -> Path:
        return self.path / "nodes"

    @property
    def inventory(self) -> Path:
        return self.nodes / "nodes.yml"


@dataclass
class Outcome:
    made: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _group(name: str) -> int | None:
    """The group's id, where it exists (the services' `gpuacct`, Debian's `prometheus`)."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _folder(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)
    _share(path, mode)


def _share(path: Path, mode: int) -> None:
    """A mode with group bits is for the services' group: the file is given to it."""
    gid = _group(SERVICES)
    if mode & 0o070 and gid is not None:
        os.chown(path, -1, gid)


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replaced whole (a reader never sees half); group bits are for the services' group."""
    write_atomically(path, text.encode(), mode,
                     group=_group(SERVICES) if mode & 0o070 else None)


def check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        if not HOST_NAME.match(host):
            raise AdminError(f"{host!r} is neither an IP address nor a host name") from None
        return host


def _load_ca(etc: Etc) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((etc.tls / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((etc.tls / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise AdminError(f"no usable CA in {etc.tls} ({exc}): run `gpuacct-admin init` "
                         "first") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AdminError(f"{etc.tls / 'ca.key'} is not the key gpuacct-admin made")
    return cert, key


def _control_config(etc: Etc, hosts: list[str]) -> dict[str, Any]:
    secret = {name: {"file": str(etc.secrets / name)} for name in SECRETS}
    public, port = hosts[0], SERVICE_PORTS
    password = (etc.secrets / ADMIN_PASSWORD).read_text(encoding="utf-8").strip()
    return {
        "auth": {"webhook_token": secret["webhook-token"],
                 "node_master_key": secret["node-master-key"],
                 # its argon2id hash: the password itself stays in secrets/, root's alone
                 "admin_password_hash": hash_password(password)},
        "tls_client_config": {"ca_file": str(etc.tls / "ca.crt")},
        "influxdb": {"version": 1, "url": f"http://{influxdb.INFLUXDB}",
                     "database": influxdb.DATABASE, "username": influxdb.USER,
                     "password": secret[influxdb.PASSWORD]},
        "billing": {"listen_address": f"0.0.0.0:{port['billing']}",
                    "prometheus_url": f"http://{PROMETHEUS}"},
        "enforcer": {"listen_address": f"0.0.0.0:{port['enforcer']}",
                     "prometheus_url": f"http://{PROMETHEUS}",
                     "enrolled_nodes_file": str(etc.inventory)},
        "web": {"listen_address": f"0.0.0.0:{port['web']}",
                "public_url": f"https://{public}:{port['web']}",
                "enforcer_url": f"https://127.0.0.1:{port['enforcer']}",
                "prometheus_url": f"http://{PROMETHEUS}",
                "session_secret": secret["session-secret"]},
    }


def init(etc: Etc, hosts: list[str]) -> Outcome:
    """Everything the control host's services need that is missing; what exists is kept (a
    second run changes no secret, no CA, no session)."""
    if not hosts:
        raise AdminError("name the control host as nodes and users reach it: --host NAME")
    hosts = [check_host(h) for h in hosts]
    done = Outcome()
    # Readable where Prometheus (nodes/nodes.yml) or the services (their group) must read;
    # the CA's key and the nodes' bundles are root's alone. secrets/ is not listed, and each
    # file there says whose it is (Alertmanager's and Grafana's copies are for their groups).
    for folder, mode in ((etc.path, 0o755), (etc.tls, 0o755), (etc.secrets, 0o711),
                         (etc.nodes, 0o755)):
        _folder(folder, mode)
    for name in (*SECRETS, ADMIN_PASSWORD):
        path = etc.secrets / name
        if path.exists():
            done.kept.append(f"secrets/{name}")
        else:  # the web administrator's password is the operator's to read, not the services'
            _write(path, secrets.token_urlsafe(24 if name == ADMIN_PASSWORD else 32) + "\n",
                   0o600 if name == ADMIN_PASSWORD else 0o640)
            done.made.append(f"secrets/{name}")
    if (etc.tls / "ca.crt").exists():
        ca, ca_key = _load_ca(etc)
        done.kept.append("tls/ca.crt")
    else:
        ca, ca_key = new_ca("gpuacct deployment CA")
        write_key(etc.tls / "ca.key", ca_key)
        write_cert(etc.tls / "ca.crt", ca)
        done.made.append("tls/ca.crt")
    try:
        current = x509.load_pem_x509_certificate((etc.tls / "server.crt").read_bytes())
        fresh = serves(current, [*hosts, "127.0.0.1", "localhost"])
    except (OSError, ValueError):
        fresh = False
    if fresh:
        done.kept.append("tls/server.crt")
    else:
        cert, key = issue(ca, ca_key, [*hosts, "127.0.0.1", "localhost"])
        write_key(etc.tls / "server.key", key)
        _share(etc.tls / "server.key", 0o640)
        (etc.tls / "server.key").chmod(0o640)
        write_cert(etc.tls / "server.crt", cert)
        done.made.append("tls/server.crt")
    for name, content in (
            ("web.yml", {"tls_server_config": {"cert_file": str(etc.tls / "server.crt"),
                                               "key_file": str(etc.tls / "server.key")}}),
            ("gpuacct.yaml", _control_config(etc, hosts))):
        if (etc.path / name).exists():
            done.kept.append(name)  # the operator's, perhaps edited
        else:  # names files, holds no secret
            _write(etc.path / name, yaml.safe_dump(content, sort_keys=False), 0o640)
            done.made.append(name)
    if not etc.inventory.exists():
        _write_inventory(etc, [])
        done.made.append("nodes/nodes.yml")
    _monitoring(etc, done)
    _grafana(etc)
    return done


def _monitoring(etc: Etc, done: Outcome) -> None:
    """Prometheus' and Alertmanager's configs for this deployment (kept once written: the
    operator's to edit), and gpuacct's rules beside them (replaced every run: they are
    gpuacct's code, and an upgrade brings new ones). Both servers listen on loopback: users
    reach balances through their nodes' daemons, Grafana and the services from this host."""
    _folder(etc.path / "rules", 0o755)
    for rule_file in rule_files():
        _write(etc.path / "rules" / rule_file.name, rule_file.read_text(encoding="utf-8"),
               0o644)
    # Alertmanager runs as Debian's `prometheus` user: its own copy of the webhook token.
    token = etc.secrets / "alertmanager-webhook-token"
    write_atomically(token, (etc.secrets / "webhook-token").read_bytes(), 0o640,
                     group=_group(MONITORING))
    ca = str(etc.tls / "ca.crt")
    tls = {"scheme": "https", "tls_config": {"ca_file": ca}}
    configs = {
        "prometheus.yml": {
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [ALERTMANAGER]}]}]},
            "rule_files": [str(etc.path / "rules" / "*.rules.yml")],
            "scrape_configs": [
                {"job_name": "prometheus", "static_configs": [{"targets": [PROMETHEUS]}]},
                # The nodes, as `node add` and `node remove` keep them (re-read on change).
                {"job_name": "gpuacct-exporter", "honor_labels": True, **tls,
                 "file_sd_configs": [{"files": [str(etc.inventory)]}]},
                *({"job_name": f"gpuacct-{name}", **tls,
                   "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                  for name, port in SERVICE_PORTS.items())]},
        "alertmanager.yml": render_alertmanager(
            RULES_DIR / "alertmanager.yml", f"https://127.0.0.1:{SERVICE_PORTS['enforcer']}"
            "/v1/alerts", token, {}, etc.tls / "ca.crt"),
    }
    for name, config in configs.items():
        if (etc.path / name).exists():
            done.kept.append(name)
        else:  # no secret inside: the servers' own user reads it
            _write(etc.path / name, yaml.safe_dump(config, sort_keys=False), 0o644)
            done.made.append(name)


def _grafana(etc: Etc) -> None:
    """Provisioning for a Grafana on this host (install-control.sh puts it in place where
    /etc/grafana/provisioning exists) and the dashboards, replaced every run like the rules.
    Grafana reads InfluxDB's password from its own copy, for its own group."""
    home = etc.path / "grafana"
    for folder in (home, home / "dashboards", home / "provisioning",
                   home / "provisioning" / "datasources", home / "provisioning" / "dashboards"):
        _folder(folder, 0o755)
    for dashboard in resources.files("grafana").joinpath("dashboards").iterdir():
        if dashboard.name.endswith(".json"):
            _write(home / "dashboards" / dashboard.name, dashboard.read_text(encoding="utf-8"),
                   0o644)
    password = etc.secrets / f"grafana-{influxdb.PASSWORD}"
    write_atomically(password, (etc.secrets / influxdb.PASSWORD).read_bytes(), 0o640,
                     group=_group(GRAFANA))
    datasources = {"apiVersion": 1, "datasources": [
        {"name": "Prometheus", "uid": "gpuacct-prometheus", "type": "prometheus",
         "access": "proxy", "url": f"http://{PROMETHEUS}", "isDefault": True,
         "editable": False, "jsonData": {"httpMethod": "POST", "timeInterval": "15s"}},
        {"name": "InfluxDB", "uid": "gpuacct-influxdb", "type": "influxdb", "access": "proxy",
         "url": f"http://{influxdb.INFLUXDB}", "user": influxdb.USER, "editable": False,
         "jsonData": {"version": "InfluxQL", "dbName": influxdb.DATABASE, "httpMode": "GET"},
         "secureJsonData": {"password": f"$__file{{{password}}}"}}]}
    dashboards = {"apiVersion": 1, "providers": [
        {"name": "gpuacct", "folder": "gpuacct", "type": "file", "disableDeletion": True,
         "allowUiUpdates": False, "updateIntervalSeconds": 60,
         "options": {"path": str(home / "dashboards")}}]}
    for kind, content in (("datasources", datasources), ("dashboards", dashboards)):
        _write(home / "provisioning" / kind / "gpuacct.yml",
               "# gpuacct-admin init's, for a Grafana on this host\n"
               + yaml.safe_dump(content, sort_keys=False), 0o644)


def inventory(etc: Etc) -> list[dict[str, Any]]:
    if not etc.inventory.exists():
        raise AdminError(f"no node inventory at {etc.inventory}: run `gpuacct-admin init` first")
    try:
        entries = yaml.safe_load(etc.inventory.read_text()) or []
    except (OSError, yaml.YAMLError) as exc:
        raise AdminError(f"cannot read {etc.inventory}: {exc}") from None
    if not isinstance(entries, list):
        raise AdminError(f"{etc.inventory} is not a file_sd list")
    return entries


def _write_inventory(etc: Etc, entries: list[dict[str, Any]]) -> None:
    entries = sorted(entries, key=_name_of)
    # Names and addresses, no secret: Prometheus reads it as its own user.
    _write(etc.inventory, "# gpuacct's GPU nodes, as gpuacct-admin node add and remove keep "
                          "them\n" + yaml.safe_dump(entries, sort_keys=False), 0o644)


def _name_of(entry: dict[str, Any]) -> str:
    return str(entry.get("labels", {}).get(NODE_LABEL, ""))


def enforcer_url(etc: Etc) -> str:
    """The enforcer as nodes reach it: the host the web's public URL names, its port."""
    try:
        config = yaml.safe_load((etc.path / "gpuacct.yaml").read_text()) or {}
        public = urllib.parse.urlsplit(config["web"]["public_url"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return f"https://CONTROL-HOST:{SERVICE_PORTS['enforcer']}"
    return f"https://{public.hostname}:{SERVICE_PORTS['enforcer']}"


def node_add(etc: Etc, name: str, address: str, port: int = EXPORTER_PORT,
             wheelhouse: Path | None = None) -> Path:
    """Enrol the node: its entry in the inventory, and its bundle (key, CA, certificate, the
    enforcer's URL, the installer and its unit, and, given one, the wheelhouse it installs
    from); the bundle's folder. Again with the same address: the same node, its bundle
    remade."""
    if not NODE_NAME.match(name):
        raise AdminError(f"{name!r} is not a node name (letters, digits, dots and dashes)")
    address = check_host(address)
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    ca, ca_key = _load_ca(etc)
    entries = inventory(etc)
    for entry in entries:
        if _name_of(entry) == name and entry.get("targets") != [target]:
            raise AdminError(f"{name} is enrolled at {entry.get('targets')}: `gpuacct-admin "
                             f"node remove {name}` first")
    master = (etc.secrets / "node-master-key").read_text().strip().splitlines()[0]
    bundle = etc.nodes / name
    _folder(bundle, 0o700)
    _write(bundle / "node-key", node_key(master.encode(), name).decode() + "\n")
    cert, key = issue(ca, ca_key, [name, address])
    write_key(bundle / "node.key", key)
    write_cert(bundle / "node.crt", cert)
    shutil.copyfile(etc.tls / "ca.crt", bundle / "ca.crt")
    _write(bundle / "enforcer-url", enforcer_url(etc) + "\n", 0o644)
    installer = resources.files("deploy")
    for packaged, copy in (("install-node.sh", "install-node.sh"),
                           ("systemd/gpuacct-exporter.service", "gpuacct-exporter.service")):
        _write(bundle / copy, installer.joinpath(packaged).read_text(encoding="utf-8"),
               0o755 if copy.endswith(".sh") else 0o644)
    link = bundle / "wheelhouse"
    if link.is_symlink():
        link.unlink()
    if wheelhouse is not None:  # scp -r and tar -h copy what it points at
        link.symlink_to(wheelhouse.resolve())
    kept = [e for e in entries if _name_of(e) != name]
    _write_inventory(etc, [*kept, {"targets": [target], "labels": {NODE_LABEL: name}}])
    return bundle


def node_remove(etc: Etc, name: str) -> None:
    """Out of the inventory (the enforcer refuses its signature from then on, Prometheus
    stops scraping it) and its bundle deleted."""
    entries = inventory(etc)
    kept = [e for e in entries if _name_of(e) != name]
    if len(kept) == len(entries):
        raise AdminError(f"no node {name!r} is enrolled (see {etc.inventory})")
    _write_inventory(etc, kept)
    shutil.rmtree(etc.nodes / name, ignore_errors=True)
