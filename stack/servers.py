"""Prometheus, Alertmanager, InfluxDB 1.x and VictoriaMetrics from Debian's packages, each in its
own directory.

Each `start_*` writes the server's config under `workdir`, starts it on loopback, and returns a
`ManagedProcess` that is ready (its readiness endpoint answered) or raises `ServerError`.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import yaml

from gpuacct import http
from stack.process import ManagedProcess, free_port

HOST = "127.0.0.1"


def _start_configured(name: str, binary: str, workdir: Path, config: dict[str, object],
                      flags: list[str], host: str, port: int, timeout: float) -> ManagedProcess:
    """A Prometheus-family server: its YAML config and data in `workdir`, ready at /-/ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / f"{name}.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    argv = [binary, f"--config.file={config_file}", f"--web.listen-address={host}:{port}",
            *flags]
    proc = ManagedProcess(name, argv, workdir / f"{name}.log", f"http://{host}:{port}/-/ready")
    return proc.start().wait_ready(timeout)


def start_prometheus(
    workdir: Path,
    port: int,
    config: dict[str, object],
    binary: str = "prometheus",
    host: str = HOST,
    timeout: float = 60.0,
) -> ManagedProcess:
    return _start_configured("prometheus", binary, workdir, config, [
        f"--storage.tsdb.path={workdir / 'data'}", "--web.enable-lifecycle"], host, port, timeout)


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


def start_alertmanager(
    workdir: Path,
    port: int,
    config: dict[str, object],
    binary: str = "prometheus-alertmanager",
    host: str = HOST,
    timeout: float = 60.0,
) -> ManagedProcess:
    return _start_configured("alertmanager", binary, workdir, config, [
        f"--storage.path={workdir / 'data'}",
        "--cluster.listen-address=",  # a single instance: no gossip port to collide on
    ], host, port, timeout)


def influxdb_config(workdir: Path, port: int, rpc_port: int, host: str = HOST) -> str:
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
) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "influxdb.conf"
    config_file.write_text(
        influxdb_config(workdir, port, rpc_port or free_port(host), host), encoding="utf-8"
    )
    argv = [binary, "-config", str(config_file)]
    proc = ManagedProcess("influxdb", argv, workdir / "influxdb.log", f"http://{host}:{port}/ping")
    return proc.start().wait_ready(timeout)


def influx_query(url: str, query: str, database: str | None = None, method: str = "GET") -> bytes:
    """One InfluxQL statement through InfluxDB 1.x's /query; returns the JSON body."""
    params = {"q": query} | ({"db": database} if database else {})
    encoded = urllib.parse.urlencode(params)
    if method == "POST":
        return http.request("POST", f"{url}/query", 10, encoded.encode()).body
    return http.get(f"{url}/query?{encoded}", 10)
