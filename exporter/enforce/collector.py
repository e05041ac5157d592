"""What enforcement has in force on this node, and what it did, as metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.enforce.actuator import Actuator


class ActuatorCollector(Collector):
    def __init__(self, actuator: Actuator) -> None:
        self.actuator = actuator

    def collect(self) -> Iterator[Metric]:
        """gpuacct_node_user_blocked{user} 1.0
        gpuacct_node_user_cpu_quota_ratio{user} 0.5
        gpuacct_enforcement_actions_total{action,result} 3.0
        gpuacct_node_policy_version 1763812345678.0
        gpuacct_gpu_reserved{gpu="0",user="alice"} 1.0
        gpuacct_gpu_reservation_end_timestamp_seconds{gpu="0",user="alice"} 1.76e+09
        gpuacct_gpu_device_gating_info{mechanism="cgroup1",reason=""} 1.0"""
        blocked = GaugeMetricFamily("gpuacct_node_user_blocked",
                                    "1 while the user may start no new GPU work here.",
                                    labels=["user"])
        quota = GaugeMetricFamily("gpuacct_node_user_cpu_quota_ratio",
                                  "CPU the user's processes may use here, in CPUs.",
                                  labels=["user"])
        actions = CounterMetricFamily("gpuacct_enforcement_actions",
                                      "Enforcement actions taken on this node, by result.",
                                      labels=["action", "result"])
        reserved = GaugeMetricFamily("gpuacct_gpu_reserved",
                                     "1 for each GPU of this node reserved, by its holder.",
                                     labels=["gpu", "user"])
        ends = GaugeMetricFamily("gpuacct_gpu_reservation_end_timestamp_seconds",
                                 "When the reservation of the GPU ends.", labels=["gpu", "user"])
        actuator = self.actuator
        with actuator.lock:
            for r in actuator.state.reserved:
                reserved.add_metric([str(r.gpu), r.user], 1)
                ends.add_metric([str(r.gpu), r.user], r.ends)
            for user, applied in sorted(actuator.state.users.items()):
                blocked.add_metric([user], float(applied.block_since is not None))
                if applied.quota and actuator.limiter is not None:  # else nothing was limited
                    quota.add_metric([user], applied.quota / 100)
            for (action, result), n in sorted(actuator.reports.counts.items()):
                actions.add_metric([action, result], n)
            version = actuator.state.version
        yield blocked
        yield quota
        yield reserved
        yield ends
        yield actions
        info = GaugeMetricFamily("gpuacct_node_info", "This node's name in reservations.",
                                 labels=["node"])
        info.add_metric([actuator.node], 1)
        yield info
        gating = GaugeMetricFamily(
            "gpuacct_gpu_device_gating_info", "How users' access to the GPUs' device nodes is "
            "held here: cgroup1, or none (and why), or off.", labels=["mechanism", "reason"])
        mechanism, _, reason = actuator.gating.partition(": ")
        gating.add_metric([mechanism, reason], 1)
        yield gating
        yield GaugeMetricFamily("gpuacct_node_policy_version",
                                "Version of the enforcement policy in force here.",
                                value=max(version, 0))
        yield GaugeMetricFamily("gpuacct_node_policy_applied_timestamp_seconds",
                                "When a newer policy was last applied here.",
                                value=actuator.last_applied)
