"""A data-driven stand-in for the `pynvml` module, for tests and the demo (never for billing).

Devices are plain dicts; what a dict lacks is what the device does not support, and the fake
raises pynvml's own error classes exactly where the real library would:

    {"driver_version": "550.54.15",
     "init_error": "DRIVER_NOT_LOADED",                  # optional: nvmlInit fails
     "devices": [{
        "uuid": "GPU-...", "name": "NVIDIA A100-SXM4-80GB",
        "memory_total": 85899345920, "memory_used": 1073741824,
        "utilization": 40, "memory_utilization": 20,      # percent
        "temperature": 55, "temperature_limit": 87, "power_mw": 210000,
        "energy_mj": 123456789,     # optional: else the power drawn since the fake began
        "ecc": {"corrected": 0, "uncorrected": 0},
        "lost": false,                                    # every call: NVMLError_GpuIsLost
        "errors": {"nvmlDeviceGetPowerUsage": "NOT_SUPPORTED"},
        "xid_events": [79],                               # delivered once each
        "processes": [{"pid": 1234, "used_memory": 1073741824, "sm_util": 50,
                       "type": "compute"}],
        "gpm": true,                # GPM (Hopper on): MIG instances' own SM activity
        "mig": [{"uuid": "MIG-...", "name": "... MIG 1g.10gb", "processes": [...],
                 "sm_activity": 30}]}]}   # percent, what GPM measures between two samples

As on a real GPU, per-process utilisation is not supported on a MIG instance.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from exporter.devices.nvml import error

Data = dict[str, Any]
Handle = tuple[int, int | None]  # (device index, MIG index or None)


def file_source(path: Path) -> Callable[[], Data]:
    """The fake's data from a JSON or YAML file, re-read whenever the file changes."""
    cache: dict[str, Any] = {"mtime": None, "data": {}}

    def load() -> Data:
        mtime = path.stat().st_mtime_ns
        if mtime != cache["mtime"]:
            text = path.read_text(encoding="utf-8")
            cache["data"] = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            cache["mtime"] = mtime
        data: Data = cache["data"] or {}
        return data

    return load


class FakeMetricsGet:
    """pynvml.c_nvmlGpmMetricsGet_t, as the fake fills it in."""

    def __init__(self) -> None:
        self.version = self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(4)]


class FakeNvml:
    def __init__(self, source: Callable[[], Data]) -> None:
        self.source = source
        self.data: Data = {}
        self._delivered_xids: dict[int, int] = {}
        self._pending_events: list[SimpleNamespace] = []
        self._lock = threading.Lock()
        self._energy: dict[int, tuple[float, float]] = {}  # index -> (mJ, when) of the power

    # -- library and system
    def nvmlInit(self) -> None:
        self.data = self.source()
        if self.data.get("init_error"):
            raise error(self.data["init_error"])

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self.data.get("driver_version", "fake"))

    def nvmlDeviceGetCount(self) -> int:
        self.data = self.source()  # each reading cycle starts here: pick up new data
        return len(self.data.get("devices", []))

    # -- devices
    def _device(self, handle: Handle, call: str) -> Data:
        index, mig = handle
        devices = self.data.get("devices", [])
        if not 0 <= index < len(devices):
            raise error("INVALID_ARGUMENT")
        device: Data = devices[index]
        if device.get("lost"):
            raise error("GPU_IS_LOST")
        if call in device.get("errors", {}):
            raise error(device["errors"][call])
        if mig is None:
            return device
        migs = device.get("mig", [])
        if not 0 <= mig < len(migs) or migs[mig] is None:
            raise error("NOT_FOUND")
        instance: Data = migs[mig]
        return instance

    def _value(self, handle: Handle, call: str, key: str) -> Any:
        device = self._device(handle, call)
        if key not in device:
            raise error("NOT_SUPPORTED")
        return device[key]

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        handle = (index, None)
        self._device(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        return str(self._value(handle, "nvmlDeviceGetUUID", "uuid"))

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        return str(self._value(handle, "nvmlDeviceGetName", "name"))

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> SimpleNamespace:
        if "mig" in self._device(handle, "nvmlDeviceGetUtilizationRates"):
            raise error("NOT_SUPPORTED")  # a GPU in MIG mode, as NVML answers
        gpu = self._value(handle, "nvmlDeviceGetUtilizationRates", "utilization")
        memory = self._device(handle, "").get("memory_utilization", 0)
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> SimpleNamespace:
        total = self._value(handle, "nvmlDeviceGetMemoryInfo", "memory_total")
        used = self._device(handle, "").get("memory_used", 0)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, handle: Handle, _sensor: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetTemperature", "temperature"))

    def nvmlDeviceGetTemperatureThreshold(self, handle: Handle, _kind: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetTemperatureThreshold", "temperature_limit"))

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        return int(self._value(handle, "nvmlDeviceGetPowerUsage", "power_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Handle) -> int:
        """mJ since the driver loaded: as given, else the power (as given at each call)
        summed over time since the fake began, as a real GPU's counter grows."""
        device = self._device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if "energy_mj" in device:
            return int(device["energy_mj"])
        power = self._value(handle, "nvmlDeviceGetTotalEnergyConsumption", "power_mw")
        now = time.monotonic()
        with self._lock:
            total, since = self._energy.get(handle[0], (0.0, now))
            total += float(power) * (now - since)
            self._energy[handle[0]] = (total, now)
        return int(total)

    def nvmlDeviceGetTotalEccErrors(self, handle: Handle, kind: int, _counter: int) -> int:
        ecc = self._value(handle, "nvmlDeviceGetTotalEccErrors", "ecc")
        return int(ecc["uncorrected" if kind else "corrected"])

    # -- MIG
    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:
        device = self._device(handle, "nvmlDeviceGetMigMode")
        if "mig" not in device:
            raise error("NOT_SUPPORTED")
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:
        return len(self._value(handle, "nvmlDeviceGetMaxMigDeviceCount", "mig"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, mig: int) -> Handle:
        mig_handle = (handle[0], mig)
        self._device(mig_handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        return mig_handle

    def nvmlDeviceGetGpuInstanceId(self, handle: Handle) -> int:
        if handle[1] is None:
            raise error("INVALID_ARGUMENT")  # not a MIG device
        self._device(handle, "nvmlDeviceGetGpuInstanceId")
        return handle[1] + 1

    # -- GPM (GPU performance monitoring): samples and the metrics between two of them
    c_nvmlGpmMetricsGet_t = FakeMetricsGet

    def nvmlGpmQueryDeviceSupport(self, handle: Handle) -> SimpleNamespace:
        device = self._device(handle, "nvmlGpmQueryDeviceSupport")
        return SimpleNamespace(version=1, isSupportedDevice=1 if device.get("gpm") else 0)

    def nvmlGpmSampleAlloc(self) -> SimpleNamespace:
        return SimpleNamespace(activity=None)

    def nvmlGpmSampleFree(self, sample: SimpleNamespace) -> None:
        pass

    def nvmlGpmMigSampleGet(self, handle: Handle, instance: int,
                            sample: SimpleNamespace) -> SimpleNamespace:
        device = self._device(handle, "nvmlGpmMigSampleGet")
        if not device.get("gpm"):
            raise error("NOT_SUPPORTED")
        migs = device.get("mig", [])
        if not 1 <= instance <= len(migs) or migs[instance - 1] is None:
            raise error("NOT_FOUND")
        sample.activity = migs[instance - 1].get("sm_activity")
        return sample

    def nvmlGpmMetricsGet(self, query: FakeMetricsGet) -> FakeMetricsGet:
        for metric in query.metrics[:query.numMetrics]:
            activity = query.sample2.activity
            metric.nvmlReturn, metric.value = (0, float(activity)) if activity is not None \
                else (error("NOT_SUPPORTED").value, 0.0)  # type: ignore[attr-defined]
        return query

    # -- processes
    def _processes(self, handle: Handle, call: str, kind: str) -> list[SimpleNamespace]:
        device = self._device(handle, call)
        return [
            SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used_memory"),
                            gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            for p in device.get("processes", []) if p.get("type", "compute") == kind
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[SimpleNamespace]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses", "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> list[SimpleNamespace]:
        return self._processes(handle, "nvmlDeviceGetGraphicsRunningProcesses", "graphics")

    def nvmlDeviceGetProcessUtilization(self, handle: Handle, last_seen: int) -> list[Any]:
        device = self._device(handle, "nvmlDeviceGetProcessUtilization")
        if handle[1] is not None:
            raise error("NOT_SUPPORTED")  # NVML has no per-process figures on MIG
        now_us = time.time_ns() // 1000
        samples = [
            SimpleNamespace(pid=p["pid"], timeStamp=now_us, smUtil=p["sm_util"], memUtil=0,
                            encUtil=0, decUtil=0)
            for p in device.get("processes", []) if "sm_util" in p
        ]
        if not samples or now_us <= last_seen:
            raise error("NOT_FOUND")  # what NVML says when no sample is newer than last_seen
        return samples

    # -- XID events
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceRegisterEvents(self, handle: Handle, _types: int, _event_set: object) -> None:
        self._device(handle, "nvmlDeviceRegisterEvents")

    def nvmlEventSetWait_v2(self, _event_set: object, _timeout_ms: int) -> SimpleNamespace:
        with self._lock:
            for index, device in enumerate(self.data.get("devices", [])):
                xids = device.get("xid_events", [])
                done = self._delivered_xids.get(index, 0)
                for xid in xids[done:]:
                    self._pending_events.append(
                        SimpleNamespace(device=(index, None), eventType=8, eventData=xid))
                self._delivered_xids[index] = len(xids)
            if self._pending_events:
                return self._pending_events.pop(0)
        raise error("TIMEOUT")
