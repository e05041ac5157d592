"""What the exporter knows about accelerators, independent of where it came from: NVIDIA's NVML,
AMD SMI, Ascend DCMI, their fakes, the demo. An NPU is a "GPU" here: it is held, billed, reserved
and enforced on exactly like one, and `vendor` tells them apart.

A value the library could not give (not supported, not available) is None and is never exported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class GpuUnavailable(Exception):
    """No GPU library or driver: the exporter runs CPU-only."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int | None = None
    sm_ratio: float | None = None


@dataclass(frozen=True)
class GpuUnit:
    """What a process can hold and a job is billed for: a whole GPU or one MIG instance."""

    label: str  # "0", or "0/mig1" for MIG device 1 of GPU 0
    uuid: str
    model: str
    processes: tuple[GpuProcess, ...] = ()
    # A MIG instance's own SM activity since the previous reading (NVML's GPM, where the GPU
    # has it); None for a whole GPU (its device's utilisation stands) or where NVML cannot tell.
    utilization_ratio: float | None = None


@dataclass(frozen=True)
class GpuDevice:
    index: int  # node-wide: the devices of every backend are numbered one after the other
    uuid: str
    model: str
    vendor: str = "nvidia"  # nvidia, amd, huawei
    driver_version: str | None = None
    lost: bool = False
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    # Where the device itself says it slows down or shuts off (NVML's slowdown threshold, AMD's
    # critical edge temperature): the hot alert's limit, else the rules' default per vendor.
    temperature_limit_celsius: float | None = None
    power_watts: float | None = None
    # The device's own energy counter (NVML's total energy since the driver loaded); None:
    # the exporter sums power over time instead.
    energy_joules_total: float | None = None
    ecc_corrected_total: int | None = None
    ecc_uncorrected_total: int | None = None
    # The device's own verdict where it gives one: 0 healthy; DCMI: 1 minor, 2 major, 3 critical.
    health: int | None = None
    xid_errors: tuple[int, ...] = ()  # XIDs that arrived since the previous reading
    units: tuple[GpuUnit, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GpuReading:
    driver_version: str | None
    devices: tuple[GpuDevice, ...]
    # What made this reading incomplete (a device lost, a process list the library would not
    # give): the backend's collector reports failure while any is there.
    problems: tuple[str, ...] = ()
    # Values the library does not support on a device (power on some boards, ECC on consumer
    # GPUs): left out, named once in the log, not a failure.
    unsupported: tuple[str, ...] = ()


class GpuBackend(Protocol):
    """A source of GPU readings; `read()` raises GpuUnavailable when nothing can be read."""

    def read(self) -> GpuReading: ...

    def close(self) -> None: ...


class Retrying:
    """A vendor library that may not be there yet: unavailable is reported, and opening it
    retried at most every `retry_seconds`, so a driver loaded later is picked up without a
    restart."""

    def __init__(self, name: str, opener: Callable[[], GpuBackend],
                 retry_seconds: float = 60.0) -> None:
        self.name = name
        self.opener = opener
        self.retry_seconds = retry_seconds
        self._backend: GpuBackend | None = None
        self._next_try = 0.0
        self._reason = ""

    def read(self) -> GpuReading:
        if self._backend is None:
            if time.monotonic() < self._next_try:
                raise GpuUnavailable(self._reason)
            try:
                self._backend = self.opener()
                log.info("%s ready", self.name)
            except GpuUnavailable as exc:
                self._reason = str(exc)
                self._next_try = time.monotonic() + self.retry_seconds
                raise
        return self._backend.read()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def library_or_fake(name: str, label: str, fake_file: Path | None,
                    over_fake: Callable[[Callable[[], Any]], GpuBackend],
                    real: Callable[[], GpuBackend]) -> GpuBackend:
    """A vendor's library, retried until it is there; for tests, its backend over the fake
    library that `fake_file` describes (the device dicts of exporter.devices.fake_nvml)."""
    if fake_file is None:
        return Retrying(name, real)
    from exporter.devices.fake_nvml import file_source

    log.warning("FAKE %s from %s: for tests only", label, fake_file)
    return Retrying(name, lambda: over_fake(file_source(fake_file)))
