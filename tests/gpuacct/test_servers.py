"""The fixtures are the real servers: each is made to do its real job once."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from stack.process import free_port
from stack.servers import influx_query
from tests.fixtures.servers import Server, Webhooks, promql, wait_for

pytestmark = pytest.mark.integration


def test_influxdb_write_and_read_back(influxdb: Server) -> None:
    influx_query(influxdb.url, 'CREATE DATABASE "t"', method="POST")
    point = (Point("usage").tag("user", "alice")  # type: ignore[no-untyped-call]
             .field("cost", 1.25).field("cost_micros", 1250000)
             .time(1_700_000_000, WritePrecision.S))
    request = urllib.request.Request(
        f"{influxdb.url}/write?db=t&precision=s",
        data=point.to_line_protocol(precision=WritePrecision.S).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204
    query = 'SELECT "cost", "cost_micros", "user" FROM "usage"'  # user is an InfluxQL keyword
    body = json.loads(influx_query(influxdb.url, query, "t"))
    series = body["results"][0]["series"][0]
    assert series["columns"] == ["time", "cost", "cost_micros", "user"]
    assert series["values"] == [["2023-11-14T22:13:20Z", 1.25, 1250000, "alice"]]


def test_prometheus_scrapes_a_target_and_answers_promql(
        start_prometheus: Callable[..., Server]) -> None:
    registry = CollectorRegistry()
    Gauge("gpuacct_fixture_answer", "A value to read back.", registry=registry).set(42)
    port = free_port()
    server, _thread = start_http_server(port, "127.0.0.1", registry)
    try:
        prom = start_prometheus([{"job_name": "small",
                                  "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
        result = wait_for(lambda: promql(prom.url, "gpuacct_fixture_answer"),
                          what="the scraped value")
        assert result[0]["metric"]["job"] == "small"
        assert result[0]["value"][1] == "42"
    finally:
        server.shutdown()


def test_alertmanager_delivers_a_posted_alert_to_a_webhook(
        start_alertmanager: Callable[[dict[str, Any]], Server],
        webhook_receiver: Webhooks) -> None:
    url, received = webhook_receiver.url, webhook_receiver.received
    am = start_alertmanager({
        "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "100ms"},
        "receivers": [{"name": "hook", "webhook_configs": [{
            "url": url, "send_resolved": True,
            "http_config": {"authorization": {"credentials": "s3cret"}}}]}],
    })
    alert = [{"labels": {"alertname": "GpuacctFixture", "user": "alice"},
              "annotations": {"summary": "fixture"},
              "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    request = urllib.request.Request(f"{am.url}/api/v2/alerts", data=json.dumps(alert).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    wait_for(lambda: received, timeout=30, what="Alertmanager's webhook")
    delivered = received[0]
    assert delivered["auth"] == "Bearer s3cret"
    assert delivered["body"]["version"] == "4"
    assert delivered["body"]["status"] == "firing"
    assert delivered["body"]["alerts"][0]["labels"] == {"alertname": "GpuacctFixture",
                                                        "user": "alice"}
