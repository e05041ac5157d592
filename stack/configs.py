"""The configs `gpuacct-stack` generates for the servers and services it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpuacct.config import StackSettings
from stack.servers import BasicAuthUser


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def prometheus_config(stack: StackSettings, exporter_targets: list[str],
                      rule_files: list[Path], ca_file: Path | None = None,
                      alertmanager_user: BasicAuthUser | None = None) -> dict[str, Any]:
    """Scrape configs for every part and gpuacct's rules; the exporter's own `job` label (the
    user's job) is kept by honor_labels, as the billing engine and the rules expect.
    `ca_file`: gpuacct's parts are scraped over TLS, verified against it;
    `alertmanager_user`: who Prometheus sends alerts as."""
    host = stack.host
    interval = _duration(stack.scrape_interval_seconds)
    alertmanager = f"{host}:{stack.alertmanager_port}"
    tls = {"scheme": "https", "tls_config": {"ca_file": str(ca_file)}} if ca_file else {}
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "alerting": {"alertmanagers": [{
            "static_configs": [{"targets": [alertmanager]}],
            **({"basic_auth": {"username": alertmanager_user.name,
                               "password_file": str(alertmanager_user.password_file)}}
               if alertmanager_user else {})}]},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"{host}:{stack.prometheus_port}"]}],
            },
            {"job_name": "gpuacct-exporter", "honor_labels": True, **tls,
             "static_configs": [{"targets": exporter_targets}]},
            {"job_name": "gpuacct-billing", **tls,
             "static_configs": [{"targets": [f"{host}:{stack.billing_port}"]}]},
            {"job_name": "gpuacct-enforcer", **tls,
             "static_configs": [{"targets": [f"{host}:{stack.enforcer_port}"]}]},
        ],
    }


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, mapping by mapping."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def service_config(user_config: Path | None, overrides: dict[str, Any], out: Path) -> Path:
    """The operator's own YAML (secret references untouched) with the stack's overrides on top.

    Written 0600: a literal secret in the operator's file stays as private as it was there.
    """
    raw: dict[str, Any] = {}
    if user_config is not None:
        raw = yaml.safe_load(user_config.read_text(encoding="utf-8")) or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump(merge(raw, overrides), sort_keys=False), encoding="utf-8")
    return out
