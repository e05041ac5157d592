"""`client` and `tls_client_config`: users' commands, and how HTTPS servers are verified."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import (
    PositiveFloat,
    model_validator,
)

from gpuacct import http
from gpuacct.config.base import ConfigError, Section


class ClientSettings(Section):
    """gpuacct-balance, run by users on a node."""

    prometheus_url: str = "http://127.0.0.1:19090"
    timeout_seconds: PositiveFloat = 2.0


class TlsClientSettings(Section):
    """How this process's HTTPS requests (to Prometheus, InfluxDB, the enforcer, the nodes)
    verify the server, as Prometheus' `tls_config`: `ca_file` is trusted beside the system's
    CAs; `cert_file` and `key_file` are a client certificate, for listeners that ask for one."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClientSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> ssl.SSLContext | None:
        """The SSL context a client of this process passes to `gpuacct.http` (None: the
        system's CAs alone). ConfigError names a file that cannot be used."""
        if self.ca_file is None and self.cert_file is None:
            return None
        try:
            return http.client_context(self.ca_file, self.cert_file, self.key_file)
        except ValueError as exc:
            raise ConfigError(f"tls_client_config: {exc}") from None
