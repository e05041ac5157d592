"""How every gpuacct daemon starts, in one place: its settings (or their problems and exit 2),
its listener (address, and TLS and basic auth from --web.config.file), how its requests
verify HTTPS servers (passed to each client, never set for the whole process), its log,
secrets re-read on SIGHUP, and its HTTP listener: an ASGI server (uvicorn) for a service with
an API, a threading WSGI server for one that serves /metrics alone (the exporter and the
billing engine stay light: no event loop, no uvicorn import)."""

from __future__ import annotations

import argparse
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpuacct.build import BuildInfo
from gpuacct.cli_common import (
    load_or_exit,
    parse_listen_address,
    setup_logging,
    web_config_or_exit,
)
from gpuacct.config import Settings
from gpuacct.listener import WebConfig, uvicorn_options
from gpuacct.metrics_http import WsgiApp, serve
from gpuacct.reload import reload_on_sighup

if TYPE_CHECKING:  # uvicorn is imported by the daemons that serve ASGI only (not the exporter)
    import uvicorn
    from prometheus_client.exposition import ThreadingWSGIServer
    from prometheus_client.registry import CollectorRegistry


@dataclass(frozen=True)
class Service:
    name: str  # gpuacct-billing, ...
    settings: Settings
    listener: WebConfig
    host: str
    port: int
    log: logging.Logger
    config_path: str | None
    tls: ssl.SSLContext | None  # for this service's HTTPS requests (tls_client_config)

    def reload_on_sighup(self, apply: Callable[[Settings], str]) -> None:
        """Secrets rotated without a restart (gpuacct.reload)."""
        reload_on_sighup(self.config_path, apply, self.log)

    def metrics_server(self, registry: CollectorRegistry, title: str,
                       routes: Mapping[str, WsgiApp] | None = None,
                       on_scrape: Callable[[dict[str, Any]], None] | None = None
                       ) -> ThreadingWSGIServer:
        """/metrics of `registry` (and the build's info) and `routes` on the service's address
        with its TLS and basic auth, served from a thread; OSError if the address cannot be
        bound."""
        registry.register(BuildInfo())
        return serve(self.host, self.port, registry, title, routes, on_scrape, self.listener)

    def asgi_server(self, app: Any) -> uvicorn.Server:
        """uvicorn on the service's address with its TLS. proxy_headers off: uvicorn would
        otherwise take the client's address from the X-Forwarded-For of anyone on this host."""
        import uvicorn

        return uvicorn.Server(uvicorn.Config(
            app, host=self.host, port=self.port, proxy_headers=False, log_level="warning",
            access_log=False, **uvicorn_options(self.listener)))  # type: ignore[arg-type]


def start(name: str, args: argparse.Namespace,
          listen_address: Callable[[Settings], str]) -> Service:
    """The service `name` as its `run` command line and config say: `--config`,
    `--web.config.file`, `--web.listen-address` (else `listen_address(settings)`), `-v`."""
    settings = load_or_exit(args.config)
    listener = web_config_or_exit(args, name)
    log = setup_logging(name, args.verbose)
    host, port = parse_listen_address(args.listen_address or listen_address(settings))
    return Service(name, settings, listener, host, port, log, args.config,
                   settings.tls_client_config.context())
