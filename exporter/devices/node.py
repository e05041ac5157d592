"""The node's device backends, chosen by the config: NVIDIA's NVML, AMD SMI and Ascend DCMI, each
a `GpuBackend` of its own module, read together as one node with one numbering of its devices.

A library that is not there, or not yet (a driver loaded later), is retried at most every
`retry_seconds`; each backend's success is reported as its own collector, and each distinct
problem is named in the log once, when it appears, and once more when it has gone.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import replace

from exporter.devices.base import GpuBackend, GpuDevice, GpuReading, GpuUnavailable, GpuUnit
from gpuacct.config import VENDORS, ExporterSettings

log = logging.getLogger(__name__)


def _renumbered(device: GpuDevice, offset: int) -> GpuDevice:
    """The device as the node's device `index + offset`; its units' labels follow."""
    if not offset:
        return device
    index = device.index + offset

    def label(unit: GpuUnit) -> str:
        _, sep, rest = unit.label.partition("/")
        return f"{index}{sep}{rest}"
    return replace(device, index=index,
                   units=tuple(replace(u, label=label(u)) for u in device.units))


class Devices:
    """Every backend of this node, read in the configured order. Devices are numbered across
    backends one after the other (NVIDIA 0-3, then AMD 4-5, say), so `gpu` stays one number
    per node for billing, reservations and enforcement; a backend that fails keeps its place
    (its last device count), so the others' numbers do not move."""

    def __init__(self, backends: list[tuple[str, GpuBackend]]) -> None:
        self.backends = backends
        self._counts: dict[str, int] = {}
        self._told: dict[str, set[str]] = {}  # each backend's problems, as last named
        self._unsupported: dict[str, set[str]] = {}

    def read(self) -> tuple[GpuReading | None, dict[str, tuple[bool, float]]]:
        """The node's reading (None when no backend could read) and each backend's success
        and duration."""
        collectors: dict[str, tuple[bool, float]] = {}
        devices: list[GpuDevice] = []
        problems: list[str] = []
        drivers: list[str] = []
        offset, any_read = 0, False
        for name, backend in self.backends:
            started = time.perf_counter()
            reading = None
            try:
                reading = backend.read()
            except GpuUnavailable as exc:
                self._tell(name, {f"not available ({exc}): metering without its devices"})
            except Exception as exc:  # a broken library must not stop CPU metering
                self._tell(name, {f"reading failed: {exc!r}"}, logging.ERROR)
            if reading is not None:
                any_read = True
                self._counts[name] = len(reading.devices)
                self._tell(name, set(reading.problems))
                self._tell_unsupported(name, set(reading.unsupported))
                devices.extend(_renumbered(d, offset) for d in reading.devices)
                problems.extend(f"{name}: {p}" for p in reading.problems)
                if reading.driver_version:
                    drivers.append(reading.driver_version)
            collectors[name] = (reading is not None and not reading.problems,
                                time.perf_counter() - started)
            offset += self._counts.get(name, 0)
        if not any_read:
            return None, collectors
        return GpuReading(drivers[0] if len(drivers) == 1 else None, tuple(devices),
                          tuple(problems)), collectors

    def _tell(self, name: str, now: set[str], level: int = logging.WARNING) -> None:
        """Name each problem of a backend once when it appears; say when all have gone."""
        told = self._told.setdefault(name, set())
        for problem in sorted(now - told):
            log.log(level, "%s: %s", name, problem)
        if told and not now:
            log.info("%s: reading again in full", name)
        self._told[name] = now

    def _tell_unsupported(self, name: str, values: set[str]) -> None:
        """A value a device does not support stays so: named once for good."""
        told = self._unsupported.setdefault(name, set())
        for value in sorted(values - told):
            log.info("%s unsupported: %s", name, value)
        told |= values

    def close(self) -> None:
        for _, backend in self.backends:
            try:
                backend.close()
            except Exception:
                log.debug("closing %s failed", backend, exc_info=True)


def open_devices(settings: ExporterSettings) -> Devices | None:
    """The configured backends, each opened by its vendor's module (gpuacct.config.devices);
    None when there are none (CPU-only)."""
    modules = {name: importlib.import_module(vendor.module) for name, vendor in VENDORS.items()
               if settings.backends == "auto" or name in settings.backends}
    names = settings.backends
    if names == "auto":
        names = [n for n, module in modules.items() if module.present(settings.devices[n])]
    backends: list[tuple[str, GpuBackend]] = []
    for name in names:
        backend = modules[name].open_backend(settings.devices[name])
        if backend is not None:
            backends.append((name, backend))
    return Devices(backends) if backends else None
