"""Prometheus, Alertmanager, InfluxDB 1.x, VictoriaMetrics and PostgreSQL from Debian's
packages, each in its own directory.

Each `start_*` writes the server's config under `workdir`, starts it on loopback, and returns a
`ManagedProcess` that is ready (its readiness endpoint answered) or raises `ServerError`.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import psycopg
import yaml

from gpuacct import http
from stack.process import ManagedProcess, ServerError, free_port

HOST = "127.0.0.1"


@dataclass(frozen=True)
class BasicAuthUser:
    """Who a Prometheus-family server lets in (its --web.config.file's basic_auth_users),
    with the password in a file for its clients (Prometheus' `password_file`, the tests)."""

    name: str
    password_file: Path

    def header(self) -> dict[str, str]:
        password = self.password_file.read_text(encoding="utf-8").strip()
        token = base64.b64encode(f"{self.name}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def web_config(self, path: Path) -> Path:
        password = self.password_file.read_text(encoding="utf-8").strip().encode()
        hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=10)).decode()
        path.write_text(yaml.safe_dump({"basic_auth_users": {self.name: hashed}}),
                        encoding="utf-8")
        return path


def _start_configured(name: str, binary: str, workdir: Path, config: dict[str, object],
                      flags: list[str], host: str, port: int, timeout: float,
                      auth: BasicAuthUser | None = None) -> ManagedProcess:
    """A Prometheus-family server: its YAML config and data in `workdir`, ready at /-/ready;
    with `auth`, only that user gets in (its --web.config.file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / f"{name}.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    argv = [binary, f"--config.file={config_file}", f"--web.listen-address={host}:{port}",
            *flags]
    if auth is not None:
        argv.append(f"--web.config.file={auth.web_config(workdir / 'web.yml')}")
    proc = ManagedProcess(name, argv, workdir / f"{name}.log", f"http://{host}:{port}/-/ready",
                          ready_headers=auth.header() if auth else None)
    return proc.start().wait_ready(timeout)


def start_prometheus(
    workdir: Path,
    port: int,
    config: dict[str, object],
    binary: str = "prometheus",
    host: str = HOST,
    timeout: float = 60.0,
) -> ManagedProcess:
    # No --web.enable-lifecycle: anyone who reaches the port could stop it (POST /-/quit).
    return _start_configured("prometheus", binary, workdir, config, [
        f"--storage.tsdb.path={workdir / 'data'}",
        # A remote_write target that has gone keeps a stopping Prometheus waiting up to a
        # minute (the default); what it could not send is in its own TSDB anyway.
        "--storage.remote.flush-deadline=2s"], host, port, timeout)


def start_victoria_metrics(
    workdir: Path,
    port: int,
    binary: str = "victoria-metrics",
    host: str = HOST,
    timeout: float = 60.0,
) -> ManagedProcess:
    """A single-node VictoriaMetrics that Prometheus servers remote_write to, queried with
    PromQL at /api/v1/query like Prometheus."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, f"-httpListenAddr={host}:{port}", f"-storageDataPath={workdir / 'data'}",
            # Samples as soon as written (no 30 s latency offset) and no cached results: the
            # billing engine asks for window ends seconds after they pass.
            "-search.latencyOffset=0s", "-search.disableCache", "-retentionPeriod=1"]
    proc = ManagedProcess("victoria-metrics", argv, workdir / "victoria-metrics.log",
                          f"http://{host}:{port}/health")
    return proc.start().wait_ready(timeout)


class Postgres:
    """A throwaway PostgreSQL cluster (Debian's `postgresql`) on loopback, password
    authentication for the user `gpuacct`, the password in a password file for libpq
    (`passfile`; set PGPASSFILE to it). For tests and benchmarks, not for keeping money:
    fsync is off."""

    USER = "gpuacct"

    def __init__(self, port: int, host: str = HOST, timeout: float = 60.0) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            raise ServerError("PostgreSQL is not installed (Debian's postgresql)")
        bin_dir = Path(found[-1]).parent
        owner = pwd.getpwnam("postgres")
        # Under /tmp: the server runs as `postgres`, which may not enter a folder only root can.
        self.root = Path(tempfile.mkdtemp(prefix="gpuacct-pg-"))
        self.port, self.host = port, host
        password = secrets.token_hex(16)
        pwfile = self.root / "pw"
        pwfile.write_text(password)
        for path in (self.root, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(self.root / "data"),
                        "-U", self.USER, "--auth=scram-sha-256", f"--pwfile={pwfile}",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True,
                       cwd=self.root)  # not the caller's folder, which `postgres` may not enter
        pwfile.unlink()
        self.passfile = Path(tempfile.mkdtemp(prefix="gpuacct-pgpass-")) / "pgpass"
        self.passfile.write_text(f"{host}:{port}:*:{self.USER}:{password}\n")
        self.passfile.chmod(0o600)
        self.process = ManagedProcess("postgresql", [
            *as_postgres, str(bin_dir / "postgres"), "-D", str(self.root / "data"),
            "-p", str(port), "-c", f"listen_addresses={host}",
            "-c", f"unix_socket_directories={self.root}", "-c", "max_connections=200",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ], self.root / "postgres.log", "", cwd=self.root)
        self.process.start()
        os.chown(self.root / "postgres.log", owner.pw_uid, owner.pw_gid)
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2, passfile=str(self.passfile)
                                ).close()
                return
            except psycopg.OperationalError:
                if not self.process.running() or time.monotonic() > deadline:
                    raise ServerError(f"PostgreSQL did not start\n{self.process.log_tail()}"
                                      ) from None
                time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.USER}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database: its URL (no password in it: the password file has it)."""
        name = f"gpuacct_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, passfile=str(self.passfile)) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        with psycopg.connect(self.url(), autocommit=True, passfile=str(self.passfile)) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions still open are ended, not waited for)."""
        if self.process.running():
            os.killpg(self.process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.popen.wait(timeout=20)  # type: ignore[union-attr]
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.passfile.parent, ignore_errors=True)


def start_alertmanager(
    workdir: Path,
    port: int,
    config: dict[str, object],
    binary: str = "prometheus-alertmanager",
    host: str = HOST,
    timeout: float = 60.0,
    auth: BasicAuthUser | None = None,
) -> ManagedProcess:
    """With `auth`, nobody else may post alerts or silences (Alertmanager trusts whoever
    reaches it)."""
    return _start_configured("alertmanager", binary, workdir, config, [
        f"--storage.path={workdir / 'data'}",
        "--cluster.listen-address=",  # a single instance: no gossip port to collide on
    ], host, port, timeout, auth)


def influxdb_config(workdir: Path, port: int, rpc_port: int, host: str = HOST,
                    auth_enabled: bool = False) -> str:
    return f"""\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{workdir / 'meta'}"

[data]
  dir = "{workdir / 'data'}"
  wal-dir = "{workdir / 'wal'}"
  query-log-enabled = false

[http]
  bind-address = "{host}:{port}"
  log-enabled = false
  auth-enabled = {str(auth_enabled).lower()}

[monitor]
  store-enabled = false
"""


def start_influxdb(
    workdir: Path,
    port: int,
    binary: str = "influxd",
    host: str = HOST,
    rpc_port: int | None = None,
    timeout: float = 60.0,
    admin: BasicAuthUser | None = None,
) -> ManagedProcess:
    """With `admin`, authentication is on and that user is its administrator (made at the
    first start): nobody else reads or writes a point."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "influxdb.conf"
    config_file.write_text(
        influxdb_config(workdir, port, rpc_port or free_port(host), host, admin is not None),
        encoding="utf-8")
    argv = [binary, "-config", str(config_file)]
    proc = ManagedProcess("influxdb", argv, workdir / "influxdb.log", f"http://{host}:{port}/ping")
    proc.start().wait_ready(timeout)
    if admin is not None:
        password = admin.password_file.read_text(encoding="utf-8").strip()
        # Allowed without credentials only while there is no user; later starts: 401.
        with contextlib.suppress(http.HttpError):
            influx_query(f"http://{host}:{port}", f"CREATE USER \"{admin.name}\" WITH PASSWORD "
                         f"'{password}' WITH ALL PRIVILEGES", method="POST")
    return proc


def influx_query(url: str, query: str, database: str | None = None, method: str = "GET",
                 auth: BasicAuthUser | None = None) -> bytes:
    """One InfluxQL statement through InfluxDB 1.x's /query; returns the JSON body."""
    params = {"q": query} | ({"db": database} if database else {})
    encoded = urllib.parse.urlencode(params)
    headers = auth.header() if auth else None
    if method == "POST":
        return http.request("POST", f"{url}/query", 10, encoded.encode(), headers).body
    return http.get(f"{url}/query?{encoded}", 10, headers)
