"""The node's device backends, chosen by the config: NVIDIA's NVML, AMD SMI and Ascend DCMI, each
a `GpuBackend` of its own module, read together as one node with one numbering of its devices.

A library that is not there, or not yet (a driver loaded later), is retried at most every
`retry_seconds`; each backend's success is reported as its own collector, and each distinct
problem is named in the log once, when it appears, and once more when it has gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from exporter.gpu import GpuBackend, GpuDevice, GpuReading, GpuUnavailable, GpuUnit
from gpuacct.config import Backend, ExporterSettings

log = logging.getLogger(__name__)

BACKENDS: tuple[Backend, ...] = ("nvml", "amdsmi", "dcmi")


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


def _nvml(settings: ExporterSettings) -> GpuBackend | None:
    mode = settings.nvml.backend
    if mode == "off":
        return None
    if mode == "auto":
        def real() -> GpuBackend:
            from exporter.nvml import NvmlBackend, check_distribution

            problem = check_distribution()
            if problem:
                log.warning("%s; install nvidia-ml-py", problem)
            return NvmlBackend()
        return Retrying("nvml", real)

    from exporter.fake_nvml import FakeNvml, file_source
    from exporter.nvml import NvmlBackend

    if mode == "demo":
        from exporter.demo import demo_source

        log.warning("DEMO MODE: GPUs are simulated; processes with GPUACCT_DEMO_GPU=N use GPU N")
        return NvmlBackend(FakeNvml(demo_source(settings.nvml.demo_users)))
    if settings.nvml.fake_file is None:
        raise GpuUnavailable("exporter.nvml.fake_file is required when backend is fake")
    log.warning("FAKE NVML from %s: for tests only", settings.nvml.fake_file)
    return NvmlBackend(FakeNvml(file_source(settings.nvml.fake_file)))


def _amdsmi(settings: ExporterSettings) -> GpuBackend:
    from exporter.amd_smi import AmdSmiBackend, load_amdsmi

    fake = settings.amdsmi.fake_file
    if fake is not None:
        from exporter.fake_amd_smi import FakeAmdSmi
        from exporter.fake_nvml import file_source

        log.warning("FAKE AMD SMI from %s: for tests only", fake)
        return Retrying("amdsmi", lambda: AmdSmiBackend(FakeAmdSmi(file_source(fake))))
    return Retrying("amdsmi", lambda: AmdSmiBackend(load_amdsmi()))


def _dcmi(settings: ExporterSettings) -> GpuBackend:
    from exporter.dcmi import DcmiBackend, DcmiLibrary

    fake = settings.dcmi.fake_file
    if fake is not None:
        from exporter.fake_dcmi import FakeDcmi
        from exporter.fake_nvml import file_source

        log.warning("FAKE DCMI from %s: for tests only", fake)
        return Retrying("dcmi", lambda: DcmiBackend(FakeDcmi(file_source(fake))))
    library = settings.dcmi.library
    return Retrying("dcmi", lambda: DcmiBackend(DcmiLibrary(library)))


def _present(name: str, settings: ExporterSettings) -> bool:
    """For `auto`: whether a vendor's library is on this node at all (NVML always counts:
    a node without it reports the nvml collector down, as it always has)."""
    if name == "nvml":
        return True
    if name == "amdsmi":
        from exporter.amd_smi import amdsmi_present

        return settings.amdsmi.fake_file is not None or amdsmi_present()
    from exporter.dcmi import dcmi_present

    return settings.dcmi.fake_file is not None or dcmi_present(settings.dcmi.library)


def open_devices(settings: ExporterSettings) -> Devices | None:
    """The configured backends; None when there are none (CPU-only)."""
    names = settings.backends
    if names == "auto":
        names = [n for n in BACKENDS if _present(n, settings)]
    backends: list[tuple[str, GpuBackend]] = []
    for name in names:
        backend = {"nvml": _nvml, "amdsmi": _amdsmi, "dcmi": _dcmi}[name](settings)
        if backend is not None:
            backends.append((name, backend))
    return Devices(backends) if backends else None
