"""gpuacct-stack: run every part of gpuacct on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.enforce.release import release_all
from gpuacct import http, signing
from gpuacct.build import add_version_argument
from gpuacct.cli_common import add_config_argument, load_or_exit, stop_on_signals
from gpuacct.config import CONFIG_ENV, ConfigError, Settings, load_settings
from stack import alerting, configs, servers
from stack import demo as demo_story
from stack.process import ManagedProcess, ServerError, bind_error
from stack.tls import kept_or_made
from web.auth import hash_password

# The state dir's folders that only the stack reads (run/ is the users').
PRIVATE_FOLDERS = ("influxdb", "alertmanager", "prometheus", "enforcer", "exporter", "billing",
                   "web", "tls", "rules")


class Stack:
    """The parts, started in dependency order and stopped in reverse."""

    def __init__(self, settings: Settings, state_dir: Path, config_file: Path | None, demo: bool):
        self.settings = settings
        # The demo compresses time: scrapes and rule evaluations every second.
        self.stack = (settings.stack.model_copy(update={"scrape_interval_seconds": 1.0})
                      if demo else settings.stack)
        self.state_dir = state_dir
        self.config_file = config_file
        self.demo = demo
        self.story: demo_story.Story | None = None
        self.parts: list[tuple[ManagedProcess, str]] = []
        self.ca_file: Path | None = None  # with TLS: what every client verifies against
        self.web_config: Path | None = None  # with TLS: every gpuacct listener's
        self.tls: ssl.SSLContext | None = None  # with TLS: the readiness checks' verifier

    def _url(self, port: int) -> str:
        """A gpuacct part's base URL (https:// with TLS)."""
        return f"{'https' if self.ca_file else 'http'}://{self.stack.host}:{port}"

    def _make_certificates(self) -> None:
        """The stack's CA (its key is not kept) and the listeners' certificate, kept across
        restarts; the stack's own readiness checks verify it too."""
        hosts = list(dict.fromkeys([self.stack.host, "localhost", socket.gethostname()]))
        certs = kept_or_made(self.state_dir / "tls", hosts)
        self.ca_file = certs.ca_file
        self.web_config = certs.web_config(self.state_dir / "tls" / "web.yml")
        self.tls = http.client_context(certs.ca_file)

    def _started(self, proc: ManagedProcess, url: str) -> None:
        self.parts.append((proc, url))
        print(f"  {proc.name:<14} {url}", flush=True)

    @property
    def public(self) -> Path:
        """What local users reach: their socket, their notices, the config `gpuacct` reads.
        In the state dir, so two stacks on one machine never share them."""
        return self.state_dir / "run"

    def _private_folders(self) -> None:
        """Users may pass through the state dir to `run/` but list nothing in it; every store,
        secret and log is in a folder, or a 0600 file, only the stack reads."""
        d = self.state_dir
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o711)
        for name in PRIVATE_FOLDERS:
            (d / name).mkdir(exist_ok=True)
            (d / name).chmod(0o700)
        self.public.mkdir(exist_ok=True)
        self.public.chmod(0o755)
        closed = next((f for f in d.parents if not f.stat().st_mode & 0o001), None)
        if closed is not None:
            print(f"gpuacct-stack: local users cannot reach {self.public} ({closed} is closed "
                  "to them): their gpuacct commands will not work; use a --state-dir they may "
                  "pass through", file=sys.stderr, flush=True)

    def _users_paths(self) -> dict[str, str]:
        """Where the node daemon meets local users: their notices and their socket."""
        return {"hook_dir": str(self.public / "users"),
                "user_socket": str(self.public / "user.sock")}

    def _user_config(self) -> Path:
        """The config local users' `gpuacct` commands read: the stack's ports, socket and
        notices (nothing secret)."""
        path = self.public / "gpuacct.yaml"
        path.write_text(yaml.safe_dump({
            "client": {"prometheus_url": f"http://{self.stack.host}:"
                                         f"{self.stack.prometheus_port}"},
            "exporter": {"actuator": self._users_paths()}}), encoding="utf-8")
        path.chmod(0o644)
        return path

    def start(self) -> None:
        s, d, host = self.stack, self.state_dir, self.stack.host
        self._check_ports()
        self._private_folders()
        print(f"gpuacct-stack: state and logs in {d}", flush=True)
        if s.tls:
            self._make_certificates()
            print(f"gpuacct-stack: TLS from the stack's CA, {self.ca_file} (kept across "
                  "restarts)", flush=True)

        # InfluxDB, Alertmanager: each lets in one user, whose password only the stack and
        # its services read (InfluxDB would take points, Alertmanager alerts and silences,
        # from anyone on this machine).
        influx_user = servers.BasicAuthUser("gpuacct", alerting.secret_file(
            d / "influxdb-password"))
        influx = servers.start_influxdb(d / "influxdb", s.influxdb_port, s.influxd_binary, host,
                                        admin=influx_user)
        self._started(influx, f"http://{host}:{s.influxdb_port}/ping")  # its / is a 404
        database = getattr(self.settings.influxdb, "database", "gpuacct")
        servers.influx_query(f"http://{host}:{s.influxdb_port}", f'CREATE DATABASE "{database}"',
                             method="POST", auth=influx_user)
        am_user = servers.BasicAuthUser("gpuacct", alerting.secret_file(
            d / "alertmanager-password"))

        rules_dir = s.rules_dir or alerting.RULES_DIR
        token = alerting.secret_file(d / "webhook-token")
        master_key = alerting.secret_file(d / "node-master-key")
        node_key = self._node_key(master_key, d / "node-key")
        am_config = alerting.render_alertmanager(
            rules_dir / "alertmanager.yml", f"{self._url(s.enforcer_port)}/v1/alerts",
            token, os.environ, self.ca_file)
        rule_files = alerting.rule_files(rules_dir)
        if self.demo:  # the one transformation the tests use: every duration / FACTOR
            am_config = alerting.compress_time(am_config, demo_story.FACTOR)
            rule_files = [self._compressed(path) for path in rule_files]
        am = servers.start_alertmanager(
            d / "alertmanager", s.alertmanager_port, am_config, s.alertmanager_binary, host,
            auth=am_user)
        self._started(am, f"http://{host}:{s.alertmanager_port}/")

        # The enforcer before the node, so the node's first pull finds it.
        auth = {"webhook_token": {"file": str(token)},
                "node_master_key": {"file": str(master_key)}}
        enforcer = self._start_service("enforcer", "enforcer", ["run"], s.enforcer_port, {
            "enforcer": {"listen_address": f"{host}:{s.enforcer_port}",
                         "database": str(d / "enforcer" / "enforcer.sqlite3"),
                         "nodes": [self._url(s.exporter_port)],
                         # users' balances, read for their `gpuacct balance`
                         "prometheus_url": f"http://{host}:{s.prometheus_port}"},
            "web": {"public_url": self._url(s.web_port)},  # `gpuacct web`'s links
            "auth": auth,
        })
        self._started(enforcer, f"{self._url(s.enforcer_port)}/docs")

        exporter = self._start_service("exporter", "exporter", ["run"], s.exporter_port, {
            "exporter": {
                "listen_address": f"{host}:{s.exporter_port}",
                "state_file": str(d / "exporter" / "state.json"),
                "actuator": {"enforcer_url": self._url(s.enforcer_port),
                             "state_file": str(d / "exporter" / "actuator.json"),
                             **self._users_paths()},
            },
            "auth": {"node_key": {"file": str(node_key)}},
        })
        self._started(exporter, f"{self._url(s.exporter_port)}/metrics")

        prom_config = configs.prometheus_config(s, [f"{host}:{s.exporter_port}"], rule_files,
                                                self.ca_file, am_user)
        prom = servers.start_prometheus(
            d / "prometheus", s.prometheus_port, prom_config, s.prometheus_binary, host
        )
        self._started(prom, f"http://{host}:{s.prometheus_port}/")

        billing = self._start_service("billing", "billing_engine", ["run"], s.billing_port, {
            "billing": {"listen_address": f"{host}:{s.billing_port}",
                        "prometheus_url": f"http://{host}:{s.prometheus_port}",
                        "ledger": str(d / "billing" / "ledger.sqlite3")},
            "influxdb": {"version": 1, "url": f"http://{host}:{s.influxdb_port}",
                         "database": database, "username": influx_user.name,
                         "password": {"file": str(influx_user.password_file)}},
        })
        self._started(billing, f"{self._url(s.billing_port)}/metrics")

        password = alerting.secret_file(d / "admin-password")
        session_secret = alerting.secret_file(d / "web-session-secret")  # sessions outlive restarts
        web = self._start_service("web", "web", ["run"], s.web_port, {
            "billing": {"ledger": str(d / "billing" / "ledger.sqlite3")},
            "web": {"listen_address": f"{host}:{s.web_port}",
                    "session_secret": {"file": str(session_secret)},
                    "prometheus_url": f"http://{host}:{s.prometheus_port}",
                    "enforcer_url": self._url(s.enforcer_port),
                    "public_url": self._url(s.web_port)},
            "auth": {**auth, "admin_password_hash": hash_password(
                password.read_text(encoding="utf-8").strip())},
        }, ready_path="/-/healthy")
        self._started(web, f"{self._url(s.web_port)}/  (admin password in {password})")
        config = self._user_config()
        print(f"gpuacct-stack: local users: GPUACCT_CONFIG={config} gpuacct balance",
              flush=True)
        if self.demo:
            self.story = demo_story.Story(d / "billing" / "ledger.sqlite3",
                                          self.public / "users", self.public / "user.sock",
                                          lambda text: print(f"demo: {text}", flush=True))
            self.story.start()

    def _check_ports(self) -> None:
        """Every port free before anything starts: one in use is named, not found six parts
        later as a server that exited."""
        s = self.stack
        for name in ("prometheus", "alertmanager", "influxdb", "exporter", "billing",
                     "enforcer", "web"):
            port = getattr(s, f"{name}_port")
            problem = bind_error(s.host, port)
            if problem is not None:
                raise ServerError(f"{s.host}:{port} ({name}) cannot be used: "
                                  f"{problem.strerror}; free it or set stack.{name}_port")

    def _node_key(self, master_file: Path, path: Path) -> Path:
        """This host's node key, derived from the master key as `gpuacct-enforcer node-key`
        does: the exporter is given only its own."""
        master = master_file.read_text(encoding="utf-8").strip().encode()
        name = self.settings.exporter.actuator.node_name or socket.gethostname()
        path.touch(mode=0o600)
        path.write_bytes(signing.node_key(master, name) + b"\n")
        return path

    def _compressed(self, rule_file: Path) -> Path:
        out = self.state_dir / "rules" / rule_file.name
        out.parent.mkdir(parents=True, exist_ok=True)
        rules = yaml.safe_load(rule_file.read_text(encoding="utf-8"))
        out.write_text(yaml.safe_dump(alerting.compress_time(rules, demo_story.FACTOR)),
                       encoding="utf-8")
        return out

    def _start_service(self, name: str, module: str, args: list[str], port: int,
                       overrides: dict[str, Any], ready_path: str = "/metrics"
                       ) -> ManagedProcess:
        """A gpuacct service with the operator's config plus the stack's overrides."""
        workdir = self.state_dir / name
        if self.demo:
            overrides = configs.merge(
                demo_story.overrides(self.stack.scrape_interval_seconds), overrides)
        serving = []
        if self.web_config is not None:
            overrides = {**overrides, "tls_client_config": {"ca_file": str(self.ca_file)}}
            serving = ["--web.config.file", str(self.web_config)]
        config = configs.service_config(self.config_file, overrides, workdir / "gpuacct.yaml")
        argv = [sys.executable, "-m", module, "--config", str(config), *args, *serving]
        proc = ManagedProcess(name, argv, workdir / f"{name}.log",
                              f"{self._url(port)}{ready_path}", ready_tls=self.tls)
        return proc.start().wait_ready()

    def first_dead(self) -> ManagedProcess | None:
        return next((proc for proc, _ in self.parts if not proc.running()), None)

    def stop(self) -> None:
        if self.story is not None:
            self.story.stop()
        for proc, _ in reversed(self.parts):
            proc.stop()
        self._release()

    def _release(self) -> None:
        """What the stack's exporter enforced on this machine's users, taken back: no CPU
        quota, cgroup or login notice outlives the stack."""
        config = self.state_dir / "exporter" / "gpuacct.yaml"
        if not any(proc.name == "exporter" for proc, _ in self.parts) or not config.exists():
            return
        try:
            released = release_all(load_settings(str(config)).exporter.actuator)
        except (ConfigError, OSError) as exc:
            print(f"gpuacct-stack: cannot release what enforcement set: {exc}", file=sys.stderr)
            return
        if released:
            print(f"  released {', '.join(released)}: quotas lifted, notices removed", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuacct-stack", description=__doc__)
    add_version_argument(parser)
    add_config_argument(parser)
    parser.add_argument("--state-dir", type=Path, help="where configs, data and logs live")
    parser.add_argument("--demo", action="store_true",
                        help="play the end-to-end story on clearly labelled simulated GPUs: "
                             "two demo users, time compressed; watch it on the web page")
    args = parser.parse_args(argv)

    config_path = args.config or os.environ.get(CONFIG_ENV) or None
    settings = load_or_exit(config_path)
    state_dir = (args.state_dir or settings.stack.state_dir).resolve()
    stopping = stop_on_signals()

    stack = Stack(settings, state_dir, Path(config_path) if config_path else None, args.demo)
    try:
        stack.start()
        print("gpuacct-stack: running; Ctrl-C stops everything", flush=True)
        while not stopping.wait(1.0):
            dead = stack.first_dead()
            if dead is not None:
                print(f"gpuacct-stack: {dead.name} stopped unexpectedly\n{dead.log_tail()}",
                      file=sys.stderr)
                return 1
        return 0
    except ServerError as exc:
        print(f"gpuacct-stack: {exc}", file=sys.stderr)
        return 1
    finally:
        print("gpuacct-stack: stopping", flush=True)
        stack.stop()

