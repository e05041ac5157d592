"""`stack`: gpuacct-stack, the whole system on one machine."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    PositiveFloat,
)

from gpuacct.config.base import Port, Section


class StackSettings(Section):
    state_dir: Path = Path("/var/lib/gpuacct/stack")
    host: str = "127.0.0.1"
    prometheus_port: Port = 19090
    alertmanager_port: Port = 19093
    influxdb_port: Port = 18086
    exporter_port: Port = 19835
    billing_port: Port = 19836
    enforcer_port: Port = 19837  # where Alertmanager delivers enforcement alerts
    web_port: Port = 19838
    # gpuacct's listeners serve TLS from a throwaway CA made under state_dir/tls, which
    # Prometheus, Alertmanager and the services verify; false (or off): plain HTTP.
    tls: bool = True
    rules_dir: Path | None = None  # default: the rules shipped in the `rules` package
    scrape_interval_seconds: PositiveFloat = 15.0
    prometheus_binary: str = "prometheus"
    alertmanager_binary: str = "prometheus-alertmanager"
    influxd_binary: str = "influxd"
