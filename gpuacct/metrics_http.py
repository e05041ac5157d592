"""/metrics and a landing page on a threading WSGI server, for every gpuacct service."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import CollectorRegistry

_LANDING = """<!doctype html><html><head><title>{title}</title></head><body>
<h1>{title}</h1><p><a href="/metrics">Metrics</a></p></body></html>"""

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _DualStackServer(ThreadingWSGIServer):
    address_family = socket.AF_INET6


WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(registry: CollectorRegistry, title: str,
             routes: Mapping[str, WsgiApp] | None = None,
             on_scrape: Callable[[dict[str, Any]], None] | None = None) -> WsgiApp:
    """/metrics, a landing page, and `routes` (path to app); `on_scrape` hears of each
    scrape of /metrics (its WSGI environ) before it is answered."""
    metrics = make_wsgi_app(registry)
    routes = dict(routes or {})
    landing = _LANDING.format(title=title).encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            if on_scrape is not None:
                on_scrape(environ)
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path in routes:
            return routes[path](environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics\n"]

    return app


def serve(host: str, port: int, registry: CollectorRegistry, title: str,
          routes: Mapping[str, WsgiApp] | None = None,
          on_scrape: Callable[[dict[str, Any]], None] | None = None) -> ThreadingWSGIServer:
    """Start serving in a daemon thread; raises OSError if the address cannot be bound."""
    server_class = _DualStackServer if ":" in host else ThreadingWSGIServer
    server = make_server(host, port, make_app(registry, title, routes, on_scrape),
                         server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
