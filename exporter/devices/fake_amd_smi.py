"""A data-driven stand-in for AMD's `amdsmi` module, for tests (never for billing).

It reads the same device dicts as the fake NVML (see `exporter.devices.fake_nvml`), what a dict
lacks being what the board does not support, and raises amdsmi's own `AmdSmiLibraryException`
with amdsmi's own status codes where the real library would:

    {"init_error": "DRIVER_NOT_LOADED",                  # optional: amdsmi_init fails
     "devices": [{
        "uuid": "...", "name": "AMD Instinct MI300X",    # asic market_name
        "compute_units": 304,                            # cu_occupancy / this = the SM share
        "driver_version": "6.8.5",
        "memory_total": ..., "memory_used": ..., "utilization": 40, "memory_utilization": 20,
        "temperature": 55, "temperature_limit": 100, "power_mw": 210000,
        "hotspot_only": false,                            # no edge sensor, as on an MI300
        "ecc": {"corrected": 0, "uncorrected": 0},
        "lost": false,                                    # every call: AMDSMI_STATUS_NOT_FOUND
        "errors": {"amdsmi_get_power_info": "NOT_SUPPORTED"},
        "processes": [{"pid": 1234, "used_memory": 1073741824, "sm_util": 50}]}]}

The `amdsmi` module itself must import (it loads libamd_smi.so when it does): its exception
class and status codes are the ones raised here.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from exporter.devices.amd_smi import load_amdsmi

Data = dict[str, Any]


class FakeAmdSmi:
    def __init__(self, source: Callable[[], Data]) -> None:
        amdsmi = load_amdsmi()
        self.source = source
        self.data: Data = {}
        self.amdsmi_wrapper = amdsmi.amdsmi_wrapper
        self.AmdSmiException = amdsmi.AmdSmiException
        self.AmdSmiLibraryException = amdsmi.AmdSmiLibraryException
        self.AmdSmiInitFlags = amdsmi.AmdSmiInitFlags
        self.AmdSmiMemoryType = amdsmi.AmdSmiMemoryType
        self.AmdSmiTemperatureType = amdsmi.AmdSmiTemperatureType
        self.AmdSmiTemperatureMetric = amdsmi.AmdSmiTemperatureMetric
        self.calls: list[str] = []  # what was asked, in order (tests of the polling pace)

    def error(self, name: str) -> Exception:
        code = getattr(self.amdsmi_wrapper, f"AMDSMI_STATUS_{name}")
        exc: Exception = self.AmdSmiLibraryException(code)
        return exc

    # -- library
    def amdsmi_init(self, _flags: IntEnum) -> None:
        self.data = self.source()
        if self.data.get("init_error"):
            raise self.error(self.data["init_error"])

    def amdsmi_shut_down(self) -> None:
        pass

    def amdsmi_get_processor_handles(self) -> list[int]:
        self.calls.append("amdsmi_get_processor_handles")
        self.data = self.source()  # each reading starts here: pick up new data
        if self.data.get("errors", {}).get("amdsmi_get_processor_handles"):
            raise self.error(self.data["errors"]["amdsmi_get_processor_handles"])
        return list(range(len(self.data.get("devices", []))))

    def _device(self, handle: int, call: str) -> Data:
        devices = self.data.get("devices", [])
        if not 0 <= handle < len(devices):
            raise self.error("INVAL")
        device: Data = devices[handle]
        if device.get("lost"):
            raise self.error("NOT_FOUND")
        if call in device.get("errors", {}):
            raise self.error(device["errors"][call])
        return device

    def _value(self, handle: int, call: str, key: str) -> Any:
        device = self._device(handle, call)
        if key not in device:
            raise self.error("NOT_SUPPORTED")
        return device[key]

    # -- identity
    def amdsmi_get_gpu_device_uuid(self, handle: int) -> str:
        return str(self._value(handle, "amdsmi_get_gpu_device_uuid", "uuid"))

    def amdsmi_get_gpu_asic_info(self, handle: int) -> dict[str, Any]:
        device = self._device(handle, "amdsmi_get_gpu_asic_info")
        return {"market_name": device.get("name", "N/A"), "vendor_id": "0x1002",
                "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
                "num_compute_units": device.get("compute_units", "N/A")}

    def amdsmi_get_gpu_driver_info(self, handle: int) -> dict[str, Any]:
        version = self._value(handle, "amdsmi_get_gpu_driver_info", "driver_version")
        return {"driver_name": "amdgpu", "driver_version": version, "driver_date": "N/A"}

    # -- gauges
    def amdsmi_get_gpu_activity(self, handle: int) -> dict[str, Any]:
        device = self._device(handle, "amdsmi_get_gpu_activity")
        return {"gfx_activity": device.get("utilization", "N/A"),
                "umc_activity": device.get("memory_utilization", "N/A"), "mm_activity": "N/A"}

    def amdsmi_get_gpu_memory_total(self, handle: int, _kind: IntEnum) -> int:
        return int(self._value(handle, "amdsmi_get_gpu_memory_total", "memory_total"))

    def amdsmi_get_gpu_memory_usage(self, handle: int, _kind: IntEnum) -> int:
        return int(self._value(handle, "amdsmi_get_gpu_memory_usage", "memory_used"))

    def amdsmi_get_temp_metric(self, handle: int, sensor: IntEnum, metric: IntEnum) -> int:
        device = self._device(handle, "amdsmi_get_temp_metric")
        sensors = self.AmdSmiTemperatureType
        if sensor != (sensors.HOTSPOT if device.get("hotspot_only") else sensors.EDGE):
            raise self.error("NOT_SUPPORTED")  # an MI300 has no edge sensor
        key = "temperature_limit" if metric == self.AmdSmiTemperatureMetric.CRITICAL \
            else "temperature"
        return int(self._value(handle, "amdsmi_get_temp_metric", key))

    def amdsmi_get_power_info(self, handle: int) -> dict[str, Any]:
        watts = self._value(handle, "amdsmi_get_power_info", "power_mw") / 1000
        return {"average_socket_power": watts, "current_socket_power": "N/A",
                "socket_power": watts, "power_limit": "N/A"}

    def amdsmi_get_gpu_total_ecc_count(self, handle: int) -> dict[str, Any]:
        ecc = self._value(handle, "amdsmi_get_gpu_total_ecc_count", "ecc")
        return {"correctable_count": ecc["corrected"], "uncorrectable_count": ecc["uncorrected"],
                "deferred_count": 0}

    # -- processes
    def amdsmi_get_gpu_process_list(self, handle: int) -> list[dict[str, Any]]:
        device = self._device(handle, "amdsmi_get_gpu_process_list")
        cus = device.get("compute_units")
        return [
            {"name": "N/A", "pid": p["pid"], "mem": p.get("used_memory", 0),
             "engine_usage": {"gfx": 0, "enc": 0},
             "memory_usage": {"gtt_mem": 0, "cpu_mem": 0,
                              "vram_mem": p.get("used_memory", "N/A")},
             "cu_occupancy": round(p["sm_util"] / 100 * cus)
             if cus and "sm_util" in p else "N/A"}
            for p in device.get("processes", [])
        ]

