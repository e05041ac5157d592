"""Exporter fixtures: a sampler over fake GPUs, and helpers to read its registry."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.devices.node import Devices
from exporter.usage.collector import build_registry
from exporter.usage.sampler import Sampler
from gpuacct.config import ExporterSettings
from tests.fixtures.gpus import FakeGpus


class Node:
    """A sampler with its registry, as the exporter process has them."""

    def __init__(self, settings: ExporterSettings, gpus: FakeGpus | list[FakeGpus] | None) -> None:
        fakes = gpus if isinstance(gpus, list) else [gpus] if gpus else []
        self.gpus = gpus
        self.sampler = Sampler(settings, Devices([(g.backend_name, g.backend()) for g in fakes])
                               if fakes else None)
        self.registry: CollectorRegistry = build_registry(lambda: self.sampler.snapshot)

    def cycle(self, times: int = 1, pause: float = 0.0) -> None:
        for _ in range(times):
            if pause:
                time.sleep(pause)
            self.sampler.cycle()

    def last_cycle(self) -> float:
        """When the sampler's last cycle read the node (time.monotonic())."""
        at = self.sampler.last_cycle
        assert at is not None, "no cycle has run"
        return at

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)

    def present(self, metric: str, /, **labels: str) -> float:
        """The sample's value; the test fails if there is none."""
        found = self.value(metric, **labels)
        assert found is not None, f"no {metric} with {labels}"
        return found

    def matching(self, metric: str, /, **labels: str) -> float | None:
        """The value of the first sample of `metric` with these labels (and maybe others)."""
        return next((value for found, value in self.samples(metric)
                     if labels.items() <= found.items()), None)

    def value_label(self, metric: str, label: str) -> str:
        """The value of `label` on the first sample of `metric`."""
        return next(labels[label] for labels, _ in self.samples(metric))

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for metric in self.registry.collect()
                for s in metric.samples if s.name == name]


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., Node]:
    def make(gpus: FakeGpus | list[FakeGpus] | None = None, **settings: Any) -> Node:
        settings.setdefault("state_file", tmp_path / "state.json")
        return Node(ExporterSettings(**settings), gpus)

    return make
