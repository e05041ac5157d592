"""/metrics and a landing page on a threading WSGI server, for every gpuacct service; TLS and
basic auth on /metrics from the listener's web config (gpuacct.listener)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import CollectorRegistry

from gpuacct.listener import BasicAuth, WebConfig, ssl_context

log = logging.getLogger(__name__)

_LANDING = """<!doctype html><html><head><title>{title}</title></head><body>
<h1>{title}</h1><p><a href="/metrics">Metrics</a></p></body></html>"""

StartResponse = Callable[..., Any]
# The largest body any route here takes (a node's signed policy). wsgiref reads no body a
# route does not read, and takes none in chunks: a declared length is all there is to check.
MAX_BODY = 4 << 20


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that does not speak TLS to a TLS listener, or hangs up: its problem, said
        # once at debug level rather than a traceback on stderr.
        log.debug("connection from %s dropped", client_address, exc_info=True)


class _DualStackServer(_Server):
    address_family = socket.AF_INET6


WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(registry: CollectorRegistry, title: str,
             routes: Mapping[str, WsgiApp] | None = None,
             on_scrape: Callable[[dict[str, Any]], None] | None = None,
             scrapers: BasicAuth | None = None) -> WsgiApp:
    """/metrics, a landing page, and `routes` (path to app); `on_scrape` hears of each
    scrape of /metrics (its WSGI environ) before it is answered; `scrapers`: who may read
    /metrics (basic auth)."""
    metrics = make_wsgi_app(registry)
    routes = dict(routes or {})
    landing = _LANDING.format(title=title).encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        declared = str(environ.get("CONTENT_LENGTH") or "0")
        if not declared.isdigit() or int(declared) > MAX_BODY:  # refused before it is read
            start_response("413 Content Too Large", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"a request body is at most {MAX_BODY} bytes\n".encode()]
        if path == "/metrics":
            if scrapers is not None and not scrapers.allows(environ.get("HTTP_AUTHORIZATION")):
                start_response("401 Unauthorized", [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Basic realm="gpuacct"')])
                return [b"unauthorized: basic_auth_users of --web.config.file\n"]
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
          on_scrape: Callable[[dict[str, Any]], None] | None = None,
          web: WebConfig | None = None) -> ThreadingWSGIServer:
    """Start serving in a daemon thread; raises OSError if the address cannot be bound."""
    web = web or WebConfig()
    server_class = _DualStackServer if ":" in host else _Server
    scrapers = BasicAuth(web.basic_auth_users) if web.basic_auth_users else None
    server = make_server(host, port, make_app(registry, title, routes, on_scrape, scrapers),
                         server_class, handler_class=_QuietHandler)
    context = ssl_context(web)
    if context is not None:
        # The handshake happens on the first read, in the connection's own thread: a slow or
        # plain-HTTP client never holds up the accepting one.
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
