"""Instant queries against Prometheus' HTTP API, values kept as the exact decimal text it sends."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error: try the window again later."""


@dataclass(frozen=True)
class Sample:
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
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusUnavailable(f"{self.url}: {exc}") from None
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"{self.url}: {body.get('error', body)}")
        return [Sample(r["metric"], Decimal(r["value"][1])) for r in body["data"]["result"]]
