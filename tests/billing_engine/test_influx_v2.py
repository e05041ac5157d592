"""The InfluxDB 2.x sink (influxdb-client's synchronous write API, what compose uses) against
a real server speaking InfluxDB's `/api/v2/write`: VictoriaMetrics (InfluxDB 2.x itself is
not installable here). What is written is read back exactly; a server away is
InfluxUnavailable, which leaves the window in the outbox."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from decimal import Decimal

import pytest

from billing_engine.influx import InfluxUnavailable, LineFormatter, make_sink
from gpuacct.config import InfluxV2Settings
from ledger import UsageLine
from stack.process import free_port
from tests.fixtures.servers import Server, wait_for

pytestmark = [pytest.mark.integration]
# A window two minutes ago: VictoriaMetrics drops points too far in the future.
WINDOW_END = int(time.time()) // 60 * 60 - 120


def series(server: Server, query: str) -> dict[str, float]:
    url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode(
        {"query": query, "time": WINDOW_END})
    with urllib.request.urlopen(url, timeout=10) as answer:
        result = json.load(answer)["data"]["result"]
    return {r["metric"].get("user", ""): float(r["value"][1]) for r in result}


def test_a_window_written_through_the_v2_api_is_read_back(
        start_victoria_metrics: Callable[[], Server]) -> None:
    server = start_victoria_metrics()
    sink = make_sink(InfluxV2Settings(version=2, url=server.url, org="gpuacct",
                                      bucket="gpuacct", token="a-token-for-tests"))
    formatter = LineFormatter()
    lines = [UsageLine("alice", "train", "gpu01", "NVIDIA A100", Decimal("60"), Decimal("12"),
                       Decimal("0.51")),
             UsageLine("bob", "eval", "gpu02", "NVIDIA RTX 3090", Decimal("30"), Decimal(0),
                       Decimal("0.100001"))]
    sink.write([formatter.line(line, WINDOW_END) for line in lines])
    found = wait_for(lambda: series(server, "gpuacct_usage_cost_micros"), timeout=20,
                     what="the points in VictoriaMetrics")
    assert found == {"alice": 510000.0, "bob": 100001.0}
    assert series(server, "gpuacct_usage_gpu_seconds") == {"alice": 60.0, "bob": 30.0}


def test_a_v2_server_away_is_unavailable_not_an_error() -> None:
    sink = make_sink(InfluxV2Settings(version=2, url=f"http://127.0.0.1:{free_port()}",
                                      org="gpuacct", bucket="gpuacct", token="a-token"))
    with pytest.raises(InfluxUnavailable, match=r"InfluxDB 2\.x write failed"):
        sink.write(["gpuacct_usage,user=alice cost=1 1800000000"])
