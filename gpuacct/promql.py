"""Instant queries against Prometheus' HTTP API, values kept as the exact decimal text it sends."""

from __future__ import annotations

import urllib.parse
from decimal import Decimal
from typing import NamedTuple

import orjson

from gpuacct import http


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
            body = orjson.loads(http.get(f"{self.url}/api/v1/query?{params}", self.timeout))
        except (http.HttpError, orjson.JSONDecodeError) as exc:
            raise PrometheusUnavailable(f"{self.url}: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise PrometheusUnavailable(f"{self.url}: {error}")
        return [Sample(r["metric"], Decimal(r["value"][1])) for r in body["data"]["result"]]
