"""The allocator's metrics, on the control plane's /metrics.

    gpuacct_allocator_queue_length 2.0
    gpuacct_allocator_queue_head_wait_seconds 1840.5
    gpuacct_allocator_reserved_gpus{user="alice"} 2.0
    gpuacct_allocator_idle_reserved_gpus{user="alice"} 0.0
    gpuacct_allocator_wait_seconds_bucket{le="60.0"} 3.0   (a request's wait until its grant)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from allocator.service import Allocator

WAIT_BUCKETS = (1, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))
IDLE_AFTER = 600.0  # seconds without a process of the holder: an idle reserved GPU


class AllocatorCollector(Collector):
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def collect(self) -> Iterator[Metric]:
        a = self.allocator
        summary = a.summary()
        queued = [e for e in summary.entries if e.state == "queued"]
        yield GaugeMetricFamily("gpuacct_allocator_queue_length", "Requests waiting for GPUs.",
                                value=len(queued))
        yield GaugeMetricFamily(
            "gpuacct_allocator_queue_head_wait_seconds",
            "How long the request at the head of the queue has waited (0: no queue).",
            value=summary.now - queued[0].submitted if queued else 0.0)
        reserved = GaugeMetricFamily("gpuacct_allocator_reserved_gpus",
                                     "GPUs reserved, by holder.", labels=["user"])
        idle = GaugeMetricFamily("gpuacct_allocator_idle_reserved_gpus",
                                 "Reserved GPUs none of the holder's processes used in the last "
                                 f"{IDLE_AFTER:g} seconds, by holder.", labels=["user"])
        held: Counter[str] = Counter()
        unused: Counter[str] = Counter()
        for e in summary.entries:
            if e.state == "granted":
                held[e.user] += e.count
                if summary.now - a.last_used(e.id, e.started or summary.now) > IDLE_AFTER:
                    unused[e.user] += e.count
        for user in sorted(held):
            reserved.add_metric([user], held[user])
            idle.add_metric([user], unused[user])
        yield reserved
        yield idle


def register(allocator: Allocator, registry: CollectorRegistry) -> None:
    """The collector, and the wait histogram the allocator observes at every grant."""
    waits = Histogram("gpuacct_allocator_wait_seconds",
                      "How long a request waited until it was granted.", buckets=WAIT_BUCKETS,
                      registry=registry)
    allocator.on_grant = waits.observe
    registry.register(AllocatorCollector(allocator))
