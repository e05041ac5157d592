"""Prices: versions with an effective time; GPU price by the first pattern matching the model.

A MIG instance (NVML names it "<GPU> MIG <n>g.<m>gb") costs its profile's share of its GPU's
price, n of the GPU's compute slices (7 on A100, H100, H200 and B200; 4 on A30), unless a
pattern that says "MIG" matches it: the GPU's own pattern ("A100") would otherwise price a
1g.10gb slice as a whole A100.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal

from gpuacct.config import PriceVersion
from gpuacct.patterns import ModelMatcher

MICRO = Decimal("0.000001")
MIG_PROFILE = re.compile(r"^(?P<gpu>.*?)\s+MIG\s+(?P<slices>\d+)g\.\d+gb", re.I)
FOUR_SLICE_GPUS = re.compile(r"\bA30\b", re.I)  # every other MIG-capable GPU has 7


def mig_share(model: str) -> tuple[str, int, int] | None:
    """For a MIG instance's model: its GPU's model, the instance's slices and the GPU's."""
    found = MIG_PROFILE.match(model)
    if found is None:
        return None
    total = 4 if FOUR_SLICE_GPUS.search(found["gpu"]) else 7
    return found["gpu"], min(int(found["slices"]), total), total


class PriceBook:
    def __init__(self, versions: list[PriceVersion],
                 reserved_factor: Decimal = Decimal(1)) -> None:
        if not versions:
            raise ValueError("at least one price version is needed")
        self.reserved_factor = reserved_factor
        self.versions = sorted(versions, key=PriceVersion.starts)
        self.starts = [v.starts() for v in self.versions]
        self._patterns = [[(ModelMatcher(g.pattern), g.per_minute) for g in v.gpu]
                          for v in self.versions]

    def version_at(self, at: float) -> int:
        """Index of the version in force at `at` (the earliest if `at` precedes them all)."""
        return max(0, bisect.bisect_right(self.starts, at) - 1)

    def gpu_per_minute(self, version: int, model: str) -> Decimal:
        mig = mig_share(model)
        for pattern, price in self._patterns[version]:
            if pattern.search(model) and (mig is None or "mig" in pattern.pattern.lower()):
                return price
        if mig is not None:
            gpu, slices, total = mig
            return self.gpu_per_minute(version, gpu) * slices / total  # one division: exact
        return self.versions[version].other_gpu_per_minute

    def cost(self, version: int, model: str, gpu_seconds: Decimal,
             cpu_core_seconds: Decimal, reserved: bool = False) -> Decimal:
        """Exact cost, rounded once to micro-units (half to even); reserved GPU time at the
        reserved price factor."""
        return self.coster(version)(model, gpu_seconds, cpu_core_seconds, reserved)

    def coster(self, version: int) -> Callable[[str, Decimal, Decimal, bool], Decimal]:
        """`cost` at one version, each model's price looked up once (a window has thousands
        of lines and a handful of models)."""
        per_minute: dict[str, Decimal] = {}
        cpu_per_minute = self.versions[version].cpu_per_core_minute

        def cost(model: str, gpu_seconds: Decimal, cpu_core_seconds: Decimal,
                 reserved: bool) -> Decimal:
            price = per_minute.get(model)
            if price is None:
                price = per_minute[model] = self.gpu_per_minute(version, model)
            if reserved:
                price *= self.reserved_factor
            raw = (gpu_seconds * price + cpu_core_seconds * cpu_per_minute) / 60
            return raw.quantize(MICRO, rounding=ROUND_HALF_EVEN)

        return cost
