"""The only module that imports `pynvml` (NVIDIA's nvidia-ml-py); everything else sees `GpuBackend`.

`NvmlBackend` takes the library as an argument: the real `pynvml` in production, the
data-driven `FakeNvml` in tests and demos, which raises pynvml's own error classes via `error()`.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pynvml

from exporter.devices.base import (
    GpuBackend,
    GpuDevice,
    GpuProcess,
    GpuReading,
    GpuUnavailable,
    GpuUnit,
    Retrying,
)

if TYPE_CHECKING:  # the config (pydantic) is not imported where only the library is needed
    from gpuacct.config import NvmlSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

NVMLError = pynvml.NVMLError
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
_LOST_CODES = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_UNKNOWN}


def error(name: str) -> Exception:
    """pynvml's own exception for a code name such as "GPU_IS_LOST" (what the fake raises)."""
    code = getattr(pynvml, f"NVML_ERROR_{name}")
    exc: Exception = pynvml.NVMLError(code)  # NVMLError maps the code to its subclass
    return exc


def check_distribution() -> str | None:
    """A warning if `pynvml` is not NVIDIA's nvidia-ml-py (the old `pynvml` wrapper, say)."""
    providers = importlib.metadata.packages_distributions().get("pynvml", [])
    if "nvidia-ml-py" in providers:
        return None
    return f"module pynvml comes from {providers or 'an unknown source'}, not nvidia-ml-py"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Lost(Exception):
    pass


class NvmlBackend:
    def __init__(self, lib: Any = pynvml) -> None:
        self.lib = lib
        try:
            lib.nvmlInit()
        except NVMLError as exc:
            raise GpuUnavailable(f"NVML could not start: {exc}") from None
        self._last_util_ts: dict[str, int] = {}
        self._gpm: dict[int, bool] = {}  # GPU index -> has GPM (MIG instances' own activity)
        self._gpm_samples: dict[str, Any] = {}  # MIG uuid -> its previous GPM sample
        self._uuids: dict[int, str] = {}
        self._problems: list[str] = []
        self._unsupported: list[str] = []
        self._events: Any = None
        self._event_devices: dict[Any, int] = {}
        self._register_xid_events()

    def close(self) -> None:
        self._query(self.lib.nvmlShutdown)

    def _query(self, fn: Callable[..., T], *args: Any) -> T | None:
        """A value, or None when NVML cannot give it; a lost GPU raises _Lost."""
        try:
            return fn(*args)
        except NVMLError as exc:
            if exc.value in _LOST_CODES:
                raise _Lost from None
            return None

    def _register_xid_events(self) -> None:
        try:
            self._events = self.lib.nvmlEventSetCreate()
            for index in range(self.lib.nvmlDeviceGetCount()):
                handle = self.lib.nvmlDeviceGetHandleByIndex(index)
                self.lib.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, self._events
                )
                self._event_devices[self.lib.nvmlDeviceGetUUID(handle)] = index
        except NVMLError as exc:
            log.info("XID events not available: %s", exc)

    def _drain_xids(self) -> dict[int, list[int]]:
        xids: dict[int, list[int]] = {}
        if self._events is None:
            return xids
        for _ in range(1000):
            try:
                event = self.lib.nvmlEventSetWait_v2(self._events, 0)
            except NVMLError:  # NVML_ERROR_TIMEOUT: nothing pending
                break
            uuid = _text(self.lib.nvmlDeviceGetUUID(event.device))
            if uuid in self._event_devices:
                xids.setdefault(self._event_devices[uuid], []).append(int(event.eventData))
        return xids

    def read(self) -> GpuReading:
        lib = self.lib
        try:
            count = lib.nvmlDeviceGetCount()
        except NVMLError as exc:
            raise GpuUnavailable(f"NVML cannot count devices: {exc}") from None
        self._problems, self._unsupported = [], []
        value = self._query(lib.nvmlSystemGetDriverVersion)
        driver = _text(value) if value is not None else None
        xids = self._drain_xids()
        devices = tuple(self._read_device(i, xids.get(i, []), driver) for i in range(count))
        return GpuReading(driver, devices, tuple(self._problems), tuple(self._unsupported))

    def _gauge(self, index: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """A device value; one the GPU does not support is left out and named."""
        try:
            return fn(*args)
        except NVMLError as exc:
            if exc.value in _LOST_CODES:
                raise _Lost from None
            self._unsupported.append(f"GPU {index} {what}: {exc}")
            return None

    def _read_device(self, index: int, xids: list[int], driver: str | None) -> GpuDevice:
        lib = self.lib
        try:
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(lib.nvmlDeviceGetUUID(handle))
            self._uuids[index] = uuid
            model = _text(lib.nvmlDeviceGetName(handle))
            util = self._gauge(index, "utilisation", lib.nvmlDeviceGetUtilizationRates, handle)
            memory = self._gauge(index, "memory", lib.nvmlDeviceGetMemoryInfo, handle)
            temp = self._gauge(index, "temperature", lib.nvmlDeviceGetTemperature, handle,
                               pynvml.NVML_TEMPERATURE_GPU)
            limit = self._gauge(index, "temperature threshold",
                                lib.nvmlDeviceGetTemperatureThreshold, handle,
                                pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
            power_mw = self._gauge(index, "power", lib.nvmlDeviceGetPowerUsage, handle)
            energy_mj = self._gauge(index, "energy", lib.nvmlDeviceGetTotalEnergyConsumption,
                                    handle)
            ecc = [
                self._gauge(index, f"{name} ECC errors", lib.nvmlDeviceGetTotalEccErrors,
                            handle, kind, pynvml.NVML_VOLATILE_ECC)
                for name, kind in (("corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                   ("uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED))
            ]
            units = self._units(handle, index, uuid, model)
        except (_Lost, NVMLError) as exc:
            # A handle that cannot be had or a GPU that fell off the bus: say so, keep the rest.
            self._problems.append(f"GPU {index} unreadable: {exc or 'GPU is lost'}")
            uuid = self._uuids.get(index, "")
            return GpuDevice(index, uuid, "", driver_version=driver, lost=True,
                             xid_errors=tuple(xids))
        return GpuDevice(
            index=index,
            uuid=uuid,
            model=model,
            driver_version=driver,
            utilization_ratio=util.gpu / 100 if util is not None else None,
            memory_utilization_ratio=util.memory / 100 if util is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            temperature_celsius=float(temp) if temp is not None else None,
            temperature_limit_celsius=float(limit) if limit else None,
            power_watts=power_mw / 1000 if power_mw is not None else None,
            energy_joules_total=energy_mj / 1000 if energy_mj is not None else None,
            ecc_corrected_total=ecc[0],
            ecc_uncorrected_total=ecc[1],
            xid_errors=tuple(xids),
            units=units,
        )

    def _units(self, handle: Any, index: int, uuid: str, model: str) -> tuple[GpuUnit, ...]:
        lib = self.lib
        mode = self._query(lib.nvmlDeviceGetMigMode, handle)
        if not mode or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
            return (GpuUnit(str(index), uuid, model, self._processes(handle, uuid)),)
        units = []
        for mig_index in range(self._query(lib.nvmlDeviceGetMaxMigDeviceCount, handle) or 0):
            mig = self._query(lib.nvmlDeviceGetMigDeviceHandleByIndex, handle, mig_index)
            if mig is None:  # an empty slot answers NOT_FOUND
                continue
            mig_uuid = _text(lib.nvmlDeviceGetUUID(mig))
            mig_model = _text(self._query(lib.nvmlDeviceGetName, mig) or f"{model} MIG")
            units.append(GpuUnit(f"{index}/mig{mig_index}", mig_uuid, mig_model,
                                 self._processes(mig, mig_uuid),
                                 self._mig_activity(handle, index, mig, mig_uuid)))
        return tuple(units)

    def _has_gpm(self, handle: Any, index: int) -> bool:
        if index not in self._gpm:
            support = self._query(self.lib.nvmlGpmQueryDeviceSupport, handle)
            self._gpm[index] = bool(support is not None and support.isSupportedDevice)
        return self._gpm[index]

    def _mig_activity(self, handle: Any, index: int, mig: Any, uuid: str) -> float | None:
        """The MIG instance's SM utilisation between this reading and the previous one, from
        two GPM samples (NVML gives no per-process utilisation on MIG); None on the first
        reading, or where the GPU has no GPM (before Hopper)."""
        lib = self.lib
        if not self._has_gpm(handle, index):
            return None
        instance = self._query(lib.nvmlDeviceGetGpuInstanceId, mig)
        sample = self._query(lib.nvmlGpmSampleAlloc)
        if instance is None or sample is None:
            return None
        if self._query(lib.nvmlGpmMigSampleGet, handle, instance, sample) is None:
            self._query(lib.nvmlGpmSampleFree, sample)
            return None
        previous, self._gpm_samples[uuid] = self._gpm_samples.get(uuid), sample
        if previous is None:
            return None
        query = lib.c_nvmlGpmMetricsGet_t()
        query.version, query.numMetrics = pynvml.NVML_GPM_METRICS_GET_VERSION, 1
        query.sample1, query.sample2 = previous, sample
        query.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
        done = self._query(lib.nvmlGpmMetricsGet, query)
        self._query(lib.nvmlGpmSampleFree, previous)
        metric = query.metrics[0]
        if done is None or metric.nvmlReturn != pynvml.NVML_SUCCESS:
            return None
        return max(0.0, min(1.0, float(metric.value) / 100))

    def _processes(self, handle: Any, uuid: str) -> tuple[GpuProcess, ...]:
        memory: dict[int, int | None] = {}
        failed = []
        for fn in (self.lib.nvmlDeviceGetComputeRunningProcesses,
                   self.lib.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                listed = fn(handle)
            except NVMLError as exc:
                if exc.value in _LOST_CODES:
                    raise _Lost from None
                failed.append(f"{fn.__name__}: {exc}")
                continue
            for proc in listed:
                # usedGpuMemory is None when NVML cannot tell; a pid listed as both compute
                # and graphics keeps the larger figure.
                sizes = [m for m in (memory.get(proc.pid), proc.usedGpuMemory) if m is not None]
                memory[proc.pid] = max(sizes) if sizes else None
        if len(failed) == 2:  # nobody on this GPU can be billed
            self._problems.append(f"GPU {uuid}: no process list ({'; '.join(failed)})")
        sm = self._sm_ratios(handle, uuid)
        return tuple(GpuProcess(pid, mem, sm.get(pid)) for pid, mem in memory.items())

    def _sm_ratios(self, handle: Any, uuid: str) -> dict[int, float]:
        """SM utilisation per pid since the previous reading of this GPU (NOT_FOUND: no samples)."""
        samples = self._query(self.lib.nvmlDeviceGetProcessUtilization, handle,
                              self._last_util_ts.get(uuid, 0)) or []
        ratios: dict[int, float] = {}
        for sample in samples:
            self._last_util_ts[uuid] = max(self._last_util_ts.get(uuid, 0), int(sample.timeStamp))
            ratios[sample.pid] = max(ratios.get(sample.pid, 0.0), sample.smUtil / 100)
        return ratios


def present(settings: NvmlSettings) -> bool:
    """NVML always counts for `backends: auto`: a node without it reports the nvml collector
    down, as it always has."""
    return True


def open_backend(settings: NvmlSettings) -> GpuBackend | None:
    mode = settings.backend
    if mode == "off":
        return None
    if mode == "auto":
        def real() -> GpuBackend:
            problem = check_distribution()
            if problem:
                log.warning("%s; install nvidia-ml-py", problem)
            return NvmlBackend()
        return Retrying("nvml", real)

    from exporter.devices.fake_nvml import FakeNvml, file_source

    if mode == "demo":
        from exporter.devices.demo import demo_source

        log.warning("DEMO MODE: GPUs are simulated; processes with GPUACCT_DEMO_GPU=N use GPU N")
        return NvmlBackend(FakeNvml(demo_source(settings.demo_users)))
    if settings.fake_file is None:
        raise GpuUnavailable("exporter.nvml.fake_file is required when backend is fake")
    log.warning("FAKE NVML from %s: for tests only", settings.fake_file)
    return NvmlBackend(FakeNvml(file_source(settings.fake_file)))
