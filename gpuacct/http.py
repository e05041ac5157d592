"""The one HTTP client every gpuacct part uses (Prometheus, InfluxDB, the enforcer, the
nodes): a request, a whole answer, and one exception for every way it can fail."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass


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


def request(method: str, url: str, timeout: float, body: bytes | None = None,
            headers: Mapping[str, str] | None = None) -> Response:
    """The answer, read whole; HttpError otherwise, with at most 500 bytes of an error body."""
    prepared = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as answer:
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


def get(url: str, timeout: float, headers: Mapping[str, str] | None = None) -> bytes:
    return request("GET", url, timeout, headers=headers).body
