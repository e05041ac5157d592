"""What a counter series is to the ledger: its cursor's key and the usage line it adds to."""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

LineKey = tuple[str, ...]  # (user, job, node, gpu_model) for GPU series, (user, job, node) for CPU


Family = Literal["gpu", "idle", "cpu"]  # GPU-seconds, idle-held GPU-seconds, CPU core-seconds
UNATTRIBUTED = "gpuacct_unattributed_gpu_seconds"  # GPU time of root or of nobody's container


class Series(NamedTuple):
    key: str  # the cursor's key: the family and every label but the metric name
    family: Family
    line: LineKey
    replicated: bool = False  # it had a replica label: another sample may be the same series


def _family(name: str) -> Family:
    return "idle" if "_idle_" in name else "gpu" if "_gpu_" in name else "cpu"


def series_key(labels: dict[str, str]) -> str:
    """The series' identity: its family and every label but the metric name.

    Label names cannot hold "=" and the unit separator cannot occur in Prometheus' JSON
    output unescaped, so the key is unambiguous."""
    family = _family(labels["__name__"])
    return family + "\x1f".join([f"{k}={v}" for k, v in sorted(labels.items())
                                  if k != "__name__"])


def user_job_node(labels: dict[str, str]) -> tuple[str, str, str]:
    """Whose job a series is of, and on which node (the exporter's instance)."""
    # Prometheus renames a target's own `job` label to `exported_job` unless honor_labels.
    return (labels.get("user", ""), labels.get("exported_job", labels.get("job", "")),
            labels.get("instance", ""))


def identify(labels: dict[str, str]) -> Series:
    key, family = series_key(labels), _family(labels["__name__"])
    job = user_job_node(labels)
    if family == "cpu":
        return Series(key, family, job)
    return Series(key, family, (*job, labels.get("gpu_model", "")))


def identify_without(labels: dict[str, str], replica_labels: frozenset[str]) -> Series:
    """The series with the labels that tell replicas apart dropped: one counter read through a
    querier that keeps them (Thanos without dedup, a store fed by both replicas) is one series."""
    dropped = replica_labels.intersection(labels)
    if not dropped:
        return identify(labels)
    return identify({k: v for k, v in labels.items() if k not in dropped})._replace(
        replicated=True)


def attributed(labels: dict[str, str], account: str) -> dict[str, str]:
    """An unattributed GPU series as a GPU series of `account`'s, on the job
    `unattributed-<container>` (`unattributed-host` for root outside any container)."""
    if not labels["__name__"].startswith(UNATTRIBUTED):
        return labels
    suffix = labels["__name__"].removeprefix(UNATTRIBUTED)
    return {**labels, "__name__": f"gpuacct_job_gpu_seconds{suffix}", "user": account,
            "exported_job": f"unattributed-{labels.get('container') or 'host'}"}


class SeriesCache:
    """`identify`, remembered by the labels as Prometheus sends them: the same series come
    back every minute, and sorting and joining 20,000 label sets took a tenth of a window.
    With `unattributed_account`, unattributed GPU series are that account's."""

    def __init__(self, replica_labels: frozenset[str] = frozenset(),
                 limit: int = 200_000, unattributed_account: str | None = None) -> None:
        account = unattributed_account
        self._identify = functools.lru_cache(maxsize=limit)(
            lambda raw: identify_without(attributed(dict(raw), account) if account
                                         else dict(raw), replica_labels))

    def __call__(self, labels: dict[str, str]) -> Series:
        series: Series = self._identify(tuple(labels.items()))
        return series
