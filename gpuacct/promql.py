"""Instant queries against Prometheus' HTTP API, values kept as the exact decimal text it sends."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import NamedTuple

import orjson


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error: try the window again later."""


class Sample(NamedTuple):  # a tuple: the engine makes 20,000 a minute
    labels: dict[str, str]
    value: Decimal


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def instant(self, query: str, at: float) -> list[Sample]:
        params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}",
                                        timeout=self.timeout) as response:
                body = orjson.loads(response.read())
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
            raise PrometheusUnavailable(f"{self.url}: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise PrometheusUnavailable(f"{self.url}: {error}")
        return [Sample(r["metric"], Decimal(r["value"][1])) for r in body["data"]["result"]]
