"""A data-driven stand-in for `exporter.devices.dcmi.DcmiLibrary` (libdcmi.so), for tests.

It reads the same device dicts as the fake NVML (see `exporter.devices.fake_nvml`), each one
chip of its own card unless `card` and `chip` say otherwise, and fails with DCMI's own return
codes where the real library would:

    {"init_error": "NOT_REDAY",                           # optional: dcmi_init fails
     "devices": [{
        "uuid": "NPU-...", "name": "Ascend 910B3",        # chip_type and chip_name
        "card": 0, "chip": 0, "health": 0,
        "memory_total": ..., "memory_used": ..., "utilization": 40,   # AI-core percent
        "temperature": 55, "power_mw": 210000, "ecc": {"corrected": 0, "uncorrected": 0},
        "lost": false,                    # every call on the chip: DCMI_ERROR_DEVICE_NOT_EXIST
        "errors": {"dcmi_get_device_power_info": "NOT_SUPPORT"},
        "processes": [{"pid": 1234, "used_memory": 1073741824}]}]}

Memory goes in and comes out in bytes here; DCMI itself gives HBM in MiB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exporter.devices.dcmi import CODES, MAX_PROCESSES, MIB, DcmiError

Data = dict[str, Any]


def _error(name: str) -> DcmiError:
    return DcmiError(CODES[name])


class FakeDcmi:
    def __init__(self, source: Callable[[], Data]) -> None:
        self.source = source
        self.data: Data = {}

    def dcmi_init(self) -> None:
        self.data = self.source()
        if self.data.get("init_error"):
            raise _error(self.data["init_error"])

    def _places(self) -> list[tuple[int, int]]:
        return [(d.get("card", i), d.get("chip", 0))
                for i, d in enumerate(self.data.get("devices", []))]

    def dcmi_get_card_list(self) -> list[int]:
        self.data = self.source()  # each reading starts here: pick up new data
        if "dcmi_get_card_list" in self.data.get("errors", {}):
            raise _error(self.data["errors"]["dcmi_get_card_list"])
        return sorted({card for card, _ in self._places()})

    def dcmi_get_device_num_in_card(self, card: int) -> int:
        count = sum(1 for c, _ in self._places() if c == card)
        if not count:
            raise _error("INVALID_DEVICE_ID")
        return count

    def _device(self, card: int, chip: int, call: str) -> Data:
        places = self._places()
        if (card, chip) not in places:
            raise _error("INVALID_DEVICE_ID")
        device: Data = self.data["devices"][places.index((card, chip))]
        if device.get("lost"):
            raise _error("DEVICE_NOT_EXIST")
        if call in device.get("errors", {}):
            raise _error(device["errors"][call])
        return device

    def _value(self, card: int, chip: int, call: str, key: str) -> Any:
        device = self._device(card, chip, call)
        if key not in device:
            raise _error("NOT_SUPPORT")
        return device[key]

    def dcmi_get_device_chip_info(self, card: int, chip: int) -> tuple[str, str]:
        name = str(self._value(card, chip, "dcmi_get_device_chip_info", "name"))
        kind, _, chip_name = name.partition(" ")
        return kind, chip_name

    def dcmi_get_device_die_v2(self, card: int, chip: int) -> str:
        uuid = str(self._value(card, chip, "dcmi_get_device_die_v2", "uuid"))
        return uuid.removeprefix("NPU-")

    def dcmi_get_device_health(self, card: int, chip: int) -> int:
        return int(self._device(card, chip, "dcmi_get_device_health").get("health", 0))

    def dcmi_get_device_temperature(self, card: int, chip: int) -> int:
        return int(self._value(card, chip, "dcmi_get_device_temperature", "temperature"))

    def dcmi_get_device_power_info(self, card: int, chip: int) -> int:
        return int(self._value(card, chip, "dcmi_get_device_power_info", "power_mw")) // 100

    def dcmi_get_device_utilization_rate(self, card: int, chip: int, _kind: int) -> int:
        return int(self._value(card, chip, "dcmi_get_device_utilization_rate", "utilization"))

    def dcmi_get_device_hbm_info(self, card: int, chip: int) -> tuple[int, int]:
        total = self._value(card, chip, "dcmi_get_device_hbm_info", "memory_total")
        used = self._device(card, chip, "").get("memory_used", 0)
        return int(total) // MIB, int(used) // MIB

    def dcmi_get_device_ecc_info(self, card: int, chip: int, _kind: int) -> tuple[int, int]:
        ecc = self._value(card, chip, "dcmi_get_device_ecc_info", "ecc")
        return int(ecc["corrected"]), int(ecc["uncorrected"])

    def dcmi_get_device_resource_info(self, card: int, chip: int) -> list[tuple[int, int]]:
        device = self._device(card, chip, "dcmi_get_device_resource_info")
        return [(int(p["pid"]), int(p.get("used_memory", 0)))
                for p in device.get("processes", [])][:MAX_PROCESSES]
