"""Keeps the job store in step with what the nodes report through Prometheus: once per settled
window, which exporters answered and which jobs each reports (with their metadata, and whether
any of their processes is alive). The store decides running, finished and lost from that.

    gpuacct_exporter_build_info                 the nodes that answered at T
    gpuacct_job_info{user,job,framework,...}    every job a node reports (running or retained)
    gpuacct_job_processes{user,job} > 0         the ones with live processes: running
    gpuacct_job_start_time_seconds{user,job}    when each began
"""

from __future__ import annotations

import logging
import time

from billing_engine.series import user_job_node
from gpuacct.config import JobSettings
from gpuacct.promql import Querier, Sample
from jobstore.store import JobSeen, JobStore, Recorded

log = logging.getLogger(__name__)
DAY = 86400


def _job(labels: dict[str, str]) -> tuple[str, str, str]:
    """The job's node, user and id, as the store keys them."""
    user, job, node = user_job_node(labels)
    return node, user, job


class JobTracker:
    def __init__(self, store: JobStore, prometheus: Querier, settings: JobSettings) -> None:
        self.store = store
        self.prometheus = prometheus
        self.settings = settings
        self._last = 0.0
        self._next_prune = 0.0

    def track(self, at: float) -> Recorded | None:
        """Record what the nodes reported at `at` (once per moment); None if already done."""
        if at <= self._last:
            return None
        def by_job(query: str) -> dict[tuple[str, str, str], Sample]:
            return {_job(s.labels): s for s in self.prometheus.instant(query, at)}
        nodes = {s.labels.get("instance", "") for s in
                 self.prometheus.instant("gpuacct_exporter_build_info", at)}
        alive = {key for key, s in by_job("gpuacct_job_processes").items() if s.value > 0}
        starts = {key: float(s.value) for key, s in
                  by_job("gpuacct_job_start_time_seconds").items()}
        seen = []
        for key, sample in by_job("gpuacct_job_info").items():
            labels = sample.labels
            seen.append(JobSeen(*key, started=starts.get(key, 0.0),
                                name=labels.get("name", ""), source=labels.get("source", ""),
                                framework=labels.get("framework", ""),
                                script=labels.get("script", ""), args=labels.get("args", ""),
                                cwd=labels.get("cwd", ""), running=key in alive))
        recorded = self.store.record(at, nodes, seen, self.settings.lost_after_seconds)
        self._last = at
        if recorded.lost:
            log.warning("%d running job(s) lost: their node has not answered for %gs",
                        recorded.lost, self.settings.lost_after_seconds)
        if recorded.reconciled:
            log.info("%d lost job(s) reconciled: their node answers again", recorded.reconciled)
        self._prune()
        return recorded

    def _prune(self) -> None:
        now = time.time()
        if now < self._next_prune:
            return
        gone = self.store.prune(now - self.settings.keep_days * DAY)
        if gone:
            log.info("%d finished job(s) older than %d days forgotten", gone,
                     self.settings.keep_days)
        self._next_prune = now + 3600
