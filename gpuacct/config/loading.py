"""The whole file: every section, read from YAML and validated in one go."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from gpuacct.config.auth import AuthSettings
from gpuacct.config.base import ConfigError, Section, describe_error
from gpuacct.config.billing import BillingSettings
from gpuacct.config.client import ClientSettings, TlsClientSettings
from gpuacct.config.enforcer import AllocatorSettings, EnforcerSettings
from gpuacct.config.exporter import ExporterSettings
from gpuacct.config.influxdb import InfluxSettings, InfluxV1Settings
from gpuacct.config.notifications import NotificationSettings
from gpuacct.config.stack import StackSettings
from gpuacct.config.web import WebSettings

CONFIG_ENV = "GPUACCT_CONFIG"
# An installed host's (install-node.sh, gpuacct-admin init): read where this user may read it,
# so users' commands on a node and the operator's on the control host need no option.
SYSTEM_CONFIG = Path("/etc/gpuacct/gpuacct.yaml")


class Settings(Section):
    exporter: ExporterSettings = ExporterSettings()
    billing: BillingSettings = BillingSettings()
    influxdb: InfluxSettings = InfluxV1Settings()
    enforcer: EnforcerSettings = EnforcerSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    web: WebSettings = WebSettings()
    client: ClientSettings = ClientSettings()
    auth: AuthSettings = AuthSettings()
    notifications: NotificationSettings = NotificationSettings()
    stack: StackSettings = StackSettings()
    tls_client_config: TlsClientSettings = TlsClientSettings()


def settings_from_mapping(data: Any, source: str = "config") -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(f"{source}: {describe_error(e)}" for e in exc.errors(include_url=False))
        ) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from `path`, else `$GPUACCT_CONFIG`, else /etc/gpuacct/gpuacct.yaml where this
    user may read it, else the defaults."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        if not os.access(SYSTEM_CONFIG, os.R_OK):
            return Settings()
        chosen = SYSTEM_CONFIG
        if os.geteuid() != 0:  # a user's command: the host's secrets are root's, not needed
            return settings_from_mapping(_without_auth(_read(chosen)), str(chosen))
    return settings_from_mapping(_read(chosen), str(chosen))


def _read(chosen: str | os.PathLike[str]) -> Any:
    source = str(chosen)
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None


def _without_auth(data: Any) -> Any:
    return {k: v for k, v in data.items() if k != "auth"} if isinstance(data, Mapping) \
        else data
