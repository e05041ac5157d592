"""Instant queries against Prometheus' HTTP API, values kept as the exact decimal text it sends."""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from decimal import Decimal
from typing import NamedTuple, Protocol

import orjson

from gpuacct import http

log = logging.getLogger(__name__)


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error: try the window again later."""


class Sample(NamedTuple):  # a tuple: the engine makes 20,000 a minute
    labels: dict[str, str]
    value: Decimal


class Querier(Protocol):
    def instant(self, query: str, at: float) -> list[Sample]: ...


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.tls = tls

    def instant(self, query: str, at: float) -> list[Sample]:
        params = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"})
        try:
            body = orjson.loads(http.get(f"{self.url}/api/v1/query?{params}", self.timeout,
                                           tls=self.tls))
        except (http.HttpError, orjson.JSONDecodeError) as exc:
            raise PrometheusUnavailable(f"{self.url}: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise PrometheusUnavailable(f"{self.url}: {error}")
        return [Sample(r["metric"], Decimal(r["value"][1])) for r in body["data"]["result"]]


class PrometheusReplicas:
    """Several Prometheus servers that scrape the same targets (an HA pair, or a long-term
    store beside them), asked as one: the replica that answered last, else the next in order.

    Replicas may lag each other by a scrape or by an outage; the billing engine, not this
    class, makes sure that reading one behind another never bills anything twice."""

    def __init__(self, urls: list[str], timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        if not urls:
            raise ValueError("no Prometheus URL")
        self.replicas = [Prometheus(url, timeout, tls) for url in urls]
        self.current = 0

    @property
    def url(self) -> str:
        return self.replicas[self.current].url

    def instant(self, query: str, at: float) -> list[Sample]:
        failures = []
        for step in range(len(self.replicas)):
            index = (self.current + step) % len(self.replicas)
            try:
                samples = self.replicas[index].instant(query, at)
            except PrometheusUnavailable as exc:
                failures.append(str(exc))
                continue
            if index != self.current:
                log.warning("reading %s: %s", self.replicas[index].url, "; ".join(failures))
                self.current = index
            return samples
        raise PrometheusUnavailable("no replica answered: " + "; ".join(failures))
