"""Cost points to InfluxDB: 1.x through /write?db= (Debian's package), 2.x through its write API."""

from __future__ import annotations

import functools
import ssl
import urllib.parse
from decimal import Decimal
from typing import Protocol

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from billing_engine.pricing import MICRO
from gpuacct import http
from gpuacct.config import InfluxV1Settings, InfluxV2Settings
from ledger import UsageLine

MEASUREMENT = "gpuacct_usage"


class InfluxUnavailable(Exception):
    """The write did not go through; the outbox keeps the points for the next try."""


# influxdb-client's escapes for tag keys and values (its _ESCAPE_KEY), here because that is private.
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t",
                              "\r": r"\r"})


def _tag_value(value: str) -> str:
    text = value.translate(_TAG_ESCAPES)
    return text + " " if text.endswith("\\") else text


def _tag_prefix(user: str, job: str, node: str, gpu_model: str) -> str:
    """The measurement and the sorted, escaped tags; a CPU-only line has no gpu_model tag."""
    tags = sorted((k, _tag_value(v)) for k, v in
                  (("user", user), ("job", job), ("node", node), ("gpu_model", gpu_model)) if v)
    return MEASUREMENT + "".join(f",{k}={v}" for k, v in tags) + " "


def _number(value: Decimal) -> str:
    text = str(float(value))
    return text[:-2] if text.endswith(".0") else text


def to_point(line: UsageLine, window_end: int) -> Point:
    """The usage line as an influxdb-client Point: the definition of what is written."""
    point = Point(MEASUREMENT).tag("user", line.user).tag("job", line.job).tag("node", line.node)
    if line.gpu_model:  # CPU-only lines carry no gpu_model tag (InfluxDB refuses empty tags)
        point = point.tag("gpu_model", line.gpu_model)
    whole: Point = (point.field("gpu_seconds", float(line.gpu_seconds))
                    .field("cpu_core_seconds", float(line.cpu_core_seconds))
                    .field("cost", float(line.cost))
                    .field("cost_micros", int(line.cost / MICRO))
                    .field("gpu_idle_seconds", float(line.gpu_idle_seconds))
                    .field("idle_cost", float(line.idle_cost))
                    .time(window_end, WritePrecision.S))
    return whole


class LineFormatter:
    """`to_point(...).to_line_protocol()`, byte for byte (a test holds it to that), far cheaper
    than building a Point per line (figures in docs/benchmarks.md). A tag set (a line's first
    four fields) is escaped once and remembered, as the same jobs recur every window."""

    def __init__(self) -> None:
        self._prefix = functools.lru_cache(maxsize=200_000)(_tag_prefix)

    def line(self, line: UsageLine, window_end: int) -> str:
        return (f"{self._prefix(*line[:4])}cost={_number(line.cost)},"
                f"cost_micros={int(line.cost / MICRO)}i,"
                f"cpu_core_seconds={_number(line.cpu_core_seconds)},"
                f"gpu_idle_seconds={_number(line.gpu_idle_seconds)},"
                f"gpu_seconds={_number(line.gpu_seconds)},"
                f"idle_cost={_number(line.idle_cost)} {window_end}")


class InfluxSink(Protocol):
    def write(self, lines: list[str]) -> None: ...


class InfluxV1:
    def __init__(self, settings: InfluxV1Settings, timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        params = {"db": settings.database, "precision": "s"}
        if settings.username:
            params["u"] = settings.username
        if settings.password:
            params["p"] = settings.password.get_secret_value()
        self.url = f"{settings.url.rstrip('/')}/write?{urllib.parse.urlencode(params)}"
        self.timeout, self.tls = timeout, tls

    def write(self, lines: list[str]) -> None:
        try:
            http.request("POST", self.url, self.timeout, "\n".join(lines).encode(), tls=self.tls)
        except http.HttpError as exc:
            if exc.status is None:
                raise InfluxUnavailable(f"InfluxDB unreachable: {exc}") from None
            raise InfluxUnavailable(f"InfluxDB refused the write ({exc.status}): "
                                    f"{exc.reason}") from None


class InfluxV2:
    """InfluxDB 2.x through influxdb-client's synchronous write API (no 2.x server is packaged
    for Debian bookworm, so the tests exercise 1.x)."""

    def __init__(self, settings: InfluxV2Settings, timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.client = InfluxDBClient(url=settings.url, token=settings.token.get_secret_value(),
                                     org=settings.org, timeout=int(timeout * 1000),
                                     ssl_context=tls)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self.bucket = settings.bucket

    def write(self, lines: list[str]) -> None:
        try:
            self.api.write(bucket=self.bucket, record=lines,
                           write_precision=WritePrecision.S)  # type: ignore[arg-type]
        except Exception as exc:  # the client raises its own and urllib3's errors
            raise InfluxUnavailable(f"InfluxDB 2.x write failed: {exc}") from None


def make_sink(settings: InfluxV1Settings | InfluxV2Settings,
              tls: ssl.SSLContext | None = None) -> InfluxSink:
    """The writer `settings` name; https:// servers verified with `tls`."""
    if isinstance(settings, InfluxV2Settings):
        return InfluxV2(settings, tls=tls)
    return InfluxV1(settings, tls=tls)
