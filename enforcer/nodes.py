"""Which nodes there are, and pushing the full policy to each of them.

Every node has a worker thread that pushes whenever the policy's version is ahead of what the
node acknowledged, retrying with exponential backoff; nodes also pull on their own, so one
that was away converges either way. What a node reports having done goes to the audit log.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from enforcer.desired import Desired, encode
from gpuacct import http
from gpuacct.config import EnforcerSettings
from gpuacct.policy import NODE_PATH, POLICY_PATH, PushResult
from gpuacct.signed_http import ExchangeError, exchange
from gpuacct.signing import MasterKeys

log = logging.getLogger(__name__)


def discover(prometheus_url: str, job: str, timeout: float = 5.0,
             tls: ssl.SSLContext | None = None) -> list[str]:
    """Base URLs of the active scrape targets of `job`, from Prometheus' target API."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/targets?state=active"
    targets = json.loads(http.get(url, timeout, tls=tls))["data"]["activeTargets"]
    nodes = set()
    for target in targets:
        if target.get("scrapePool") == job or target.get("labels", {}).get("job") == job:
            parts = urllib.parse.urlsplit(target["scrapeUrl"])
            nodes.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(nodes)


class PushMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter("gpuacct_enforcer_push_failures", "Failed pushes of the policy.",
                                ["node"], registry=registry)
        self.reachable = Gauge("gpuacct_enforcer_node_reachable",
                               "1 if the node took the last push, 0 if it failed.", ["node"],
                               registry=registry)
        self.acked = Gauge("gpuacct_enforcer_node_policy_version",
                           "Policy version the node last acknowledged.", ["node"],
                           registry=registry)


class NodeWorker:
    def __init__(self, url: str, desired: Desired, keys: MasterKeys,
                 settings: EnforcerSettings, metrics: PushMetrics,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url, self.tls = url, tls
        self.node: str | None = None  # the name it signs with, asked before the first push
        self.acked = -1
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._desired, self._keys = desired, keys
        self._settings, self._metrics = settings, metrics
        self._thread = threading.Thread(target=self._run, name=f"push {url}", daemon=True)
        for m in (metrics.failures, metrics.reachable, metrics.acked):
            m.labels(url)  # a node never pushed to yet still has its series

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            self.wake.clear()
            policy = self._desired.current()
            if self.acked >= policy.version:
                self.wake.wait(60.0)
                continue
            try:
                self.push(encode(policy))
                backoff = 0.5
            except ExchangeError as exc:
                log.warning("push of policy %d failed, retry in %.1fs: %s", policy.version,
                            backoff, exc)
                self._metrics.failures.labels(self.url).inc()
                self._metrics.reachable.labels(self.url).set(0)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self._settings.max_backoff_seconds)

    def _node_name(self) -> str:
        try:
            answer = http.get(self.url.rstrip("/") + NODE_PATH,
                              self._settings.push_timeout_seconds, tls=self.tls)
            name = json.loads(answer)["node"]
        except http.HttpError as exc:
            raise ExchangeError(f"{self.url}{NODE_PATH}: {exc}", exc.status) from None
        except (ValueError, KeyError, TypeError):
            raise ExchangeError(f"{self.url}{NODE_PATH}: not a node's name") from None
        if not isinstance(name, str) or not name:
            raise ExchangeError(f"{self.url}{NODE_PATH}: not a node's name")
        return name

    def push(self, body: bytes) -> None:
        node = self.node = self.node or self._node_name()
        try:
            answer = exchange(self.url, "PUT", POLICY_PATH, body,
                              lambda *m: self._keys.sign(node, *m),
                              lambda method, path, headers, data: self._keys.verify(
                                  method, path, headers, data, node=node),
                              self._settings.push_timeout_seconds, self.tls)
        except ExchangeError:
            self.node = None  # renamed, or another node now: asked again next time
            raise
        try:
            result = PushResult.model_validate_json(answer)
        except ValueError as exc:
            raise ExchangeError(f"{self.url}: unreadable answer: {exc}") from None
        self._desired.store.record_actions(result.node, result.actions)
        self.acked = result.version
        self._metrics.reachable.labels(self.url).set(1)
        self._metrics.acked.labels(self.url).set(result.version)


class Pusher:
    """A worker per node; the node list is fixed by config or refreshed from Prometheus.
    `tls` verifies https:// nodes and Prometheus."""

    def __init__(self, desired: Desired, keys: MasterKeys,
                 settings: EnforcerSettings, registry: CollectorRegistry,
                 discover_nodes: Callable[[], list[str]] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._desired, self._keys = desired, keys
        self._settings, self._tls = settings, tls
        self._metrics = PushMetrics(registry)
        self._discover = discover_nodes or (lambda: discover(
            settings.prometheus_url, settings.exporter_job, tls=tls))
        self.workers: dict[str, NodeWorker] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._settings.nodes:
            self._set_nodes(self._settings.nodes)
        else:
            threading.Thread(target=self._discovery_loop, name="discovery", daemon=True).start()

    def _discovery_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._set_nodes(self._discover())
            except (http.HttpError, ValueError, KeyError) as exc:
                log.warning("cannot list nodes from Prometheus: %s", exc)
            self._stop.wait(self._settings.discovery_interval_seconds)

    def _set_nodes(self, urls: list[str]) -> None:
        with self._lock:
            for url in self.workers.keys() - set(urls):
                log.info("node %s is gone", url)
                self.workers.pop(url).stop.set()
            for url in set(urls) - self.workers.keys():
                log.info("node %s", url)
                worker = NodeWorker(url, self._desired, self._keys,
                                    self._settings, self._metrics, self._tls)
                self.workers[url] = worker
                worker.start()

    def policy_changed(self) -> None:
        with self._lock:
            for worker in self.workers.values():
                worker.wake.set()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for worker in self.workers.values():
                worker.stop.set()
                worker.wake.set()
