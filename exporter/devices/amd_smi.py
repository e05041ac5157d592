"""The only module that uses AMD's `amdsmi` library (ROCm's AMD SMI); everything else sees
`GpuBackend`.

`AmdSmiBackend` takes the library as an argument: the real `amdsmi` module in production, the
data-driven `FakeAmdSmi` in tests, which raises amdsmi's own `AmdSmiLibraryException` with
amdsmi's own status codes. The library asks to be polled gently: a RETRY or BUSY answer keeps
the previous reading (never a failure), and readings are at least `min_interval` apart.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from exporter.devices.base import (
    GpuBackend,
    GpuDevice,
    GpuProcess,
    GpuReading,
    GpuUnavailable,
    GpuUnit,
    library_or_fake,
)

if TYPE_CHECKING:  # the config (pydantic) is not imported where only the library is needed
    from gpuacct.config import AmdSmiSettings

T = TypeVar("T")


def load_amdsmi() -> Any:
    """The real library, initialised for GPUs; GpuUnavailable names why it cannot be."""
    try:
        # amdsmi prints to stdout and fails with a KeyError when libamd_smi.so is missing.
        with contextlib.redirect_stdout(io.StringIO()):
            import amdsmi
    except Exception as exc:
        raise GpuUnavailable(f"the amdsmi library cannot be loaded ({exc!r}); install ROCm's "
                             "amd-smi-lib and its amdsmi Python package") from None
    return amdsmi


def amdsmi_present() -> bool:
    try:
        load_amdsmi()
    except GpuUnavailable:
        return False
    return True


def _status(lib: Any, name: str) -> int:
    return int(getattr(lib.amdsmi_wrapper, f"AMDSMI_STATUS_{name}"))


def _number(value: Any) -> float | None:
    """amdsmi answers "N/A" where a board has no such value."""
    return float(value) if isinstance(value, int | float) else None


class AmdSmiBackend:
    vendor = "amd"

    def __init__(self, lib: Any, min_interval: float = 1.0) -> None:
        self.lib = lib
        self.min_interval = min_interval
        try:
            lib.amdsmi_init(lib.AmdSmiInitFlags.INIT_AMD_GPUS)
        except lib.AmdSmiException as exc:
            raise GpuUnavailable(f"AMD SMI could not start: {_text(exc)}") from None
        self._backoff = {_status(lib, n) for n in ("RETRY", "BUSY", "TIMEOUT")}
        self._unsupported_codes = {_status(lib, n) for n in
                                   ("NOT_SUPPORTED", "NOT_YET_IMPLEMENTED", "NO_DATA")}
        self._last: GpuReading | None = None
        self._last_at = -1e9
        self._problems: list[str] = []
        self._unsupported: list[str] = []

    def close(self) -> None:
        with contextlib.suppress(self.lib.AmdSmiException):
            self.lib.amdsmi_shut_down()

    def read(self) -> GpuReading:
        now = time.monotonic()
        if self._last is not None and now - self._last_at < self.min_interval:
            return self._last
        try:
            handles = self.lib.amdsmi_get_processor_handles()
        except self.lib.AmdSmiLibraryException as exc:
            if self._last is not None and exc.get_error_code() in self._backoff:
                return self._last
            raise GpuUnavailable(f"AMD SMI cannot list GPUs: {_text(exc)}") from None
        self._problems, self._unsupported = [], []
        try:
            devices = tuple(self._device(i, h) for i, h in enumerate(handles))
        except _Retry:
            if self._last is not None:
                return self._last
            raise GpuUnavailable("AMD SMI asks to retry later") from None
        drivers = {d.driver_version for d in devices if d.driver_version}
        self._last = GpuReading(drivers.pop() if len(drivers) == 1 else None, devices,
                                tuple(self._problems), tuple(self._unsupported))
        self._last_at = now
        return self._last

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except self.lib.AmdSmiLibraryException as exc:
            if exc.get_error_code() in self._backoff:
                raise _Retry from None
            raise

    def _gauge(self, index: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return self._call(fn, *args)
        except self.lib.AmdSmiLibraryException as exc:
            self._unsupported.append(f"GPU {index} {what}: {_text(exc)}")
            return None

    def _device(self, index: int, handle: Any) -> GpuDevice:
        lib = self.lib
        try:
            uuid = str(self._call(lib.amdsmi_get_gpu_device_uuid, handle))
            asic = self._call(lib.amdsmi_get_gpu_asic_info, handle)
        except lib.AmdSmiLibraryException as exc:
            self._problems.append(f"GPU {index} unreadable: {_text(exc)}")
            return GpuDevice(index, "", "", vendor=self.vendor, lost=True)
        model = str(asic.get("market_name") or "AMD GPU")
        driver = self._gauge(index, "driver", lib.amdsmi_get_gpu_driver_info, handle) or {}
        activity = self._gauge(index, "activity", lib.amdsmi_get_gpu_activity, handle) or {}
        vram = lib.AmdSmiMemoryType.VRAM
        total = self._gauge(index, "memory", lib.amdsmi_get_gpu_memory_total, handle, vram)
        used = self._gauge(index, "memory", lib.amdsmi_get_gpu_memory_usage, handle, vram)
        power = self._gauge(index, "power", lib.amdsmi_get_power_info, handle) or {}
        ecc = self._gauge(index, "ECC errors", lib.amdsmi_get_gpu_total_ecc_count, handle) or {}
        gfx, umc = _number(activity.get("gfx_activity")), _number(activity.get("umc_activity"))
        watts = _number(power.get("average_socket_power"))
        if watts is None:
            watts = _number(power.get("current_socket_power"))
        processes = self._processes(index, handle, _number(asic.get("num_compute_units")))
        return GpuDevice(
            index=index, uuid=uuid, model=model, vendor=self.vendor,
            driver_version=str(driver["driver_version"]) if driver.get("driver_version")
            not in (None, "N/A") else None,
            utilization_ratio=gfx / 100 if gfx is not None else None,
            memory_utilization_ratio=umc / 100 if umc is not None else None,
            memory_used_bytes=int(used) if used is not None else None,
            memory_total_bytes=int(total) if total is not None else None,
            temperature_celsius=self._temperature(index, handle, "CURRENT"),
            temperature_limit_celsius=self._temperature(index, handle, "CRITICAL"),
            power_watts=watts,
            ecc_corrected_total=_int(ecc.get("correctable_count")),
            ecc_uncorrected_total=_int(ecc.get("uncorrectable_count")),
            units=(GpuUnit(str(index), uuid, model, processes),),
        )

    def _temperature(self, index: int, handle: Any, metric: str) -> float | None:
        """The edge sensor, or the hotspot on boards without one (MI300)."""
        lib = self.lib
        for sensor in ("EDGE", "HOTSPOT"):
            try:
                value = self._call(lib.amdsmi_get_temp_metric, handle,
                                   getattr(lib.AmdSmiTemperatureType, sensor),
                                   getattr(lib.AmdSmiTemperatureMetric, metric))
            except lib.AmdSmiLibraryException as exc:
                if exc.get_error_code() not in self._unsupported_codes:
                    break
                continue
            return _number(value)
        self._unsupported.append(f"GPU {index} temperature ({metric.lower()})")
        return None

    def _processes(self, index: int, handle: Any,
                   compute_units: float | None) -> tuple[GpuProcess, ...]:
        try:
            listed = self._call(self.lib.amdsmi_get_gpu_process_list, handle)
        except self.lib.AmdSmiLibraryException as exc:
            self._problems.append(f"GPU {index}: no process list ({_text(exc)})")
            return ()
        processes = []
        for proc in listed:
            vram = _number((proc.get("memory_usage") or {}).get("vram_mem"))
            cus = _number(proc.get("cu_occupancy"))
            share = min(1.0, cus / compute_units) if cus is not None and compute_units else None
            processes.append(GpuProcess(int(proc["pid"]),
                                        int(vram) if vram is not None else None, share))
        return tuple(processes)


class _Retry(Exception):
    """AMD SMI said RETRY, BUSY or TIMEOUT: keep the previous reading."""


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _text(exc: Exception) -> str:
    """amdsmi's own short wording: `AMDSMI_STATUS_NOT_SUPPORTED`."""
    info = getattr(exc, "get_error_info", None)
    return str(info(detailed=False)) if info else str(exc)


def present(settings: AmdSmiSettings) -> bool:
    return settings.fake_file is not None or amdsmi_present()


def open_backend(settings: AmdSmiSettings) -> GpuBackend:
    def over_fake(data: Callable[[], Any]) -> GpuBackend:
        from exporter.devices.fake_amd_smi import FakeAmdSmi

        return AmdSmiBackend(FakeAmdSmi(data))
    return library_or_fake("amdsmi", "AMD SMI", settings.fake_file, over_fake,
                           lambda: AmdSmiBackend(load_amdsmi()))
