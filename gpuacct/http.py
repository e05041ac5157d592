"""The one HTTP client every gpuacct part uses (Prometheus, InfluxDB, the enforcer, the
nodes): a request, a whole answer, and one exception for every way it can fail."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class HttpError(Exception):
    """The server could not be reached (`status` None), or answered outside 2xx."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status is not None else reason)
        self.url, self.reason, self.status = url, reason, status


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def client_context(ca_file: Path | None, cert_file: Path | None = None,
                   key_file: Path | None = None) -> ssl.SSLContext:
    """Verifies servers against the system's CAs and `ca_file` (a private CA), presenting the
    client certificate `cert_file` if given. ValueError names a file that cannot be used."""
    context = ssl.create_default_context()
    try:
        if ca_file is not None:
            context.load_verify_locations(ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        used = [str(p) for p in (ca_file, cert_file, key_file) if p is not None]
        raise ValueError(f"cannot use {', '.join(used)}: {exc}") from None
    return context


def request(method: str, url: str, timeout: float, body: bytes | None = None,
            headers: Mapping[str, str] | None = None,
            tls: ssl.SSLContext | None = None) -> Response:
    """The answer, read whole; HttpError otherwise, with at most 500 bytes of an error body.
    An https:// server is verified with `tls` (None: against the system's CAs only)."""
    prepared = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(prepared, timeout=timeout, context=tls) as answer:
            return Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode(errors="replace").strip()
        raise HttpError(url, detail, exc.code) from None
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: a bad URL
        raise HttpError(url, str(exc)) from None


def detail(body: str) -> str:
    """The message in an error body as FastAPI writes it (`{"detail": "..."}`), else the body."""
    try:
        found = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body
    return found if isinstance(found, str) else body


def get(url: str, timeout: float, headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None) -> bytes:
    return request("GET", url, timeout, headers=headers, tls=tls).body
