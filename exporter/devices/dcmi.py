"""The only module that uses Huawei's DCMI (`libdcmi.so`, Ascend's driver library, through ctypes
as pynvml is over libnvidia-ml); everything else sees `GpuBackend`.

`DcmiLibrary` is the ctypes layer: one method per C function used, returning Python values and
raising `DcmiError` with DCMI's own return code. `DcmiBackend` reads NPUs through it, or through
the data-driven `FakeDcmi` in tests, which raises the same `DcmiError` codes.

Each chip (a card holds one or two) is one device: model from its chip info ("Ascend 910B3"),
AI-core utilisation, HBM used and total, temperature, power, health, HBM ECC; per-process memory
from `dcmi_get_device_resource_info`, the only per-process figure DCMI gives.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

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
    from gpuacct.config import DcmiSettings

T = TypeVar("T")

# DCMI's return codes (dcmi_interface_api.h).
SUCCESS = 0
ERROR_CODES = {
    -8001: "INVALID_PARAMETER", -8002: "OPER_NOT_PERMITTED", -8003: "MEM_OPERATE_FAIL",
    -8004: "SECURE_FUN_FAIL", -8005: "INNER_ERR", -8006: "TIME_OUT",
    -8007: "INVALID_DEVICE_ID", -8008: "DEVICE_NOT_EXIST", -8009: "IOCTL_FAIL",
    -8010: "SEND_MSG_FAIL", -8011: "RECV_MSG_FAIL", -8012: "NOT_REDAY",
    -8013: "NOT_SUPPORT_IN_CONTAINER", -8015: "RESET_FAIL", -8016: "ABORT_OPERATE",
    -8017: "IS_UPGRADING", -8020: "RESOURCE_OCCUPIED", -8023: "CONFIG_INFO_NOT_EXIST",
    -8255: "NOT_SUPPORT",
}
CODES = {name: code for code, name in ERROR_CODES.items()}
# A chip that has gone: its calls answer these (a card reset or fallen off the bus).
_LOST = {CODES[n] for n in ("DEVICE_NOT_EXIST", "INVALID_DEVICE_ID", "IOCTL_FAIL",
                            "RESET_FAIL")}
INPUT_TYPE_AICORE = 2  # dcmi_get_device_utilization_rate
DEVICE_TYPE_HBM = 2  # dcmi_get_device_ecc_info
MAX_PROCESSES = 32  # what Ascend's own exporter asks dcmi_get_device_resource_info for
MAX_CARDS = 64
MIB = 1 << 20


class DcmiError(Exception):
    """A DCMI call's non-zero return code, named as dcmi_interface_api.h names it."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        return f"DCMI_ERROR_{ERROR_CODES.get(self.code, 'UNKNOWN')} ({self.code})"


class _ChipInfo(ctypes.Structure):
    _fields_: ClassVar = [("chip_type", ctypes.c_char * 32), ("chip_name", ctypes.c_char * 32),
                          ("chip_ver", ctypes.c_char * 32), ("aicore_cnt", ctypes.c_uint)]


class _HbmInfo(ctypes.Structure):
    _fields_: ClassVar = [("memory_size", ctypes.c_ulonglong), ("freq", ctypes.c_uint),
                          ("memory_usage", ctypes.c_ulonglong), ("temp", ctypes.c_int),
                          ("bandwith_util_rate", ctypes.c_uint)]


class _EccInfo(ctypes.Structure):
    _fields_: ClassVar = [("enable_flag", ctypes.c_int),
                          *[(name, ctypes.c_uint) for name in (
                              "single_bit_error_cnt", "double_bit_error_cnt",
                              "total_single_bit_error_cnt", "total_double_bit_error_cnt",
                              "single_bit_isolated_pages_cnt", "double_bit_isolated_pages_cnt",
                              "single_bit_next_isolated_pages_cnt",
                              "double_bit_next_isolated_pages_cnt")]]


class _ProcMemInfo(ctypes.Structure):
    _fields_: ClassVar = [("proc_id", ctypes.c_int), ("proc_mem_usage", ctypes.c_ulonglong)]


class DcmiLibrary:
    """libdcmi.so through ctypes: each method is one C call, values out, DcmiError on failure."""

    def __init__(self, library: str) -> None:
        try:
            self._lib = ctypes.CDLL(library)
        except OSError as exc:
            raise GpuUnavailable(f"DCMI cannot be loaded from {library}: {exc}") from None

    def _call(self, name: str, *args: Any) -> None:
        function = getattr(self._lib, name, None)
        if function is None:
            raise DcmiError(CODES["NOT_SUPPORT"])  # an older driver without this call
        code = int(function(*args))
        if code != SUCCESS:
            raise DcmiError(code)

    def dcmi_init(self) -> None:
        self._call("dcmi_init")

    def dcmi_get_card_list(self) -> list[int]:
        count, cards = ctypes.c_int(), (ctypes.c_int * MAX_CARDS)()
        self._call("dcmi_get_card_list", ctypes.byref(count), cards, MAX_CARDS)
        return list(cards[:count.value])

    def dcmi_get_device_num_in_card(self, card: int) -> int:
        count = ctypes.c_int()
        self._call("dcmi_get_device_num_in_card", card, ctypes.byref(count))
        return count.value

    def dcmi_get_device_chip_info(self, card: int, chip: int) -> tuple[str, str]:
        info = _ChipInfo()
        self._call("dcmi_get_device_chip_info", card, chip, ctypes.byref(info))
        return info.chip_type.decode(errors="replace"), info.chip_name.decode(errors="replace")

    def dcmi_get_device_die_v2(self, card: int, chip: int) -> str:
        die = (ctypes.c_uint * 5)()
        self._call("dcmi_get_device_die_v2", card, chip, 1, ctypes.byref(die))  # the VDIE id
        return "-".join(f"{part:08x}" for part in die)

    def _int_out(self, name: str, card: int, chip: int, *before: int,
                 kind: type[ctypes.c_int] | type[ctypes.c_uint] = ctypes.c_int) -> int:
        value = kind()
        self._call(name, card, chip, *before, ctypes.byref(value))
        return int(value.value)

    def dcmi_get_device_health(self, card: int, chip: int) -> int:
        return self._int_out("dcmi_get_device_health", card, chip, kind=ctypes.c_uint)

    def dcmi_get_device_temperature(self, card: int, chip: int) -> int:
        return self._int_out("dcmi_get_device_temperature", card, chip)

    def dcmi_get_device_power_info(self, card: int, chip: int) -> int:
        """In tenths of a watt."""
        return self._int_out("dcmi_get_device_power_info", card, chip)

    def dcmi_get_device_utilization_rate(self, card: int, chip: int, kind: int) -> int:
        return self._int_out("dcmi_get_device_utilization_rate", card, chip, kind,
                             kind=ctypes.c_uint)

    def dcmi_get_device_hbm_info(self, card: int, chip: int) -> tuple[int, int]:
        """HBM total and used, in MiB."""
        info = _HbmInfo()
        self._call("dcmi_get_device_hbm_info", card, chip, ctypes.byref(info))
        return int(info.memory_size), int(info.memory_usage)

    def dcmi_get_device_ecc_info(self, card: int, chip: int, kind: int) -> tuple[int, int]:
        """Single-bit (corrected) and double-bit (uncorrected) errors in all."""
        info = _EccInfo()
        self._call("dcmi_get_device_ecc_info", card, chip, kind, ctypes.byref(info))
        return int(info.total_single_bit_error_cnt), int(info.total_double_bit_error_cnt)

    def dcmi_get_device_resource_info(self, card: int, chip: int) -> list[tuple[int, int]]:
        """(pid, device memory in bytes) of every process on the chip."""
        procs, count = (_ProcMemInfo * MAX_PROCESSES)(), ctypes.c_int(MAX_PROCESSES)
        self._call("dcmi_get_device_resource_info", card, chip, procs, ctypes.byref(count))
        return [(int(p.proc_id), int(p.proc_mem_usage)) for p in procs[:count.value]]


def dcmi_present(library: str) -> bool:
    try:
        DcmiLibrary(library)
    except GpuUnavailable:
        return False
    return True


class _Lost(Exception):
    pass


class DcmiBackend:
    vendor = "huawei"

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        try:
            lib.dcmi_init()
        except DcmiError as exc:
            raise GpuUnavailable(f"DCMI could not start: {exc}") from None
        self._problems: list[str] = []
        self._unsupported: list[str] = []
        self._uuids: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        pass  # DCMI has no shutdown call

    def _chips(self) -> list[tuple[int, int]]:
        try:
            return [(card, chip) for card in self.lib.dcmi_get_card_list()
                    for chip in range(self.lib.dcmi_get_device_num_in_card(card))]
        except DcmiError as exc:
            raise GpuUnavailable(f"DCMI cannot list NPUs: {exc}") from None

    def read(self) -> GpuReading:
        chips = self._chips()
        self._problems, self._unsupported = [], []
        devices = tuple(self._device(i, card, chip) for i, (card, chip) in enumerate(chips))
        return GpuReading(None, devices, tuple(self._problems), tuple(self._unsupported))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except DcmiError as exc:
            if exc.code in _LOST:
                raise _Lost(str(exc)) from None
            raise

    def _gauge(self, index: int, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return self._call(fn, *args)
        except DcmiError as exc:
            self._unsupported.append(f"NPU {index} {what}: {exc}")
            return None

    def _device(self, index: int, card: int, chip: int) -> GpuDevice:
        lib = self.lib
        try:
            kind, name = self._call(lib.dcmi_get_device_chip_info, card, chip)
            uuid = self._uuid(card, chip)
            health = self._call(lib.dcmi_get_device_health, card, chip)
            util = self._gauge(index, "AI-core utilisation", lib.dcmi_get_device_utilization_rate,
                               card, chip, INPUT_TYPE_AICORE)
            hbm = self._gauge(index, "HBM", lib.dcmi_get_device_hbm_info, card, chip)
            temp = self._gauge(index, "temperature", lib.dcmi_get_device_temperature, card, chip)
            power = self._gauge(index, "power", lib.dcmi_get_device_power_info, card, chip)
            ecc = self._gauge(index, "HBM ECC errors", lib.dcmi_get_device_ecc_info, card, chip,
                              DEVICE_TYPE_HBM)
            model = f"{kind} {name}".strip() or "Ascend NPU"
            processes = self._processes(index, card, chip)
        except (_Lost, DcmiError) as exc:
            self._problems.append(f"NPU {index} (card {card} chip {chip}) unreadable: {exc}")
            return GpuDevice(index, self._uuids.get((card, chip), ""), "", vendor=self.vendor,
                             lost=True)
        return GpuDevice(
            index=index, uuid=uuid, model=model, vendor=self.vendor, health=health,
            utilization_ratio=util / 100 if util is not None else None,
            memory_used_bytes=hbm[1] * MIB if hbm else None,
            memory_total_bytes=hbm[0] * MIB if hbm else None,
            temperature_celsius=float(temp) if temp is not None else None,
            power_watts=power / 10 if power is not None else None,
            ecc_corrected_total=ecc[0] if ecc else None,
            ecc_uncorrected_total=ecc[1] if ecc else None,
            units=(GpuUnit(str(index), uuid, model, processes),),
        )

    def _uuid(self, card: int, chip: int) -> str:
        """The chip's die id, stable across reboots and slots; else its place. Asked once."""
        if (card, chip) in self._uuids:
            return self._uuids[(card, chip)]
        try:
            die = f"NPU-{self._call(self.lib.dcmi_get_device_die_v2, card, chip)}"
        except DcmiError:
            die = f"NPU-card{card}-chip{chip}"
        self._uuids[(card, chip)] = die
        return die

    def _processes(self, index: int, card: int, chip: int) -> tuple[GpuProcess, ...]:
        try:
            listed = self._call(self.lib.dcmi_get_device_resource_info, card, chip)
        except DcmiError as exc:
            self._problems.append(f"NPU {index}: no process list ({exc})")
            return ()
        return tuple(GpuProcess(pid, memory) for pid, memory in listed)



def present(settings: DcmiSettings) -> bool:
    return settings.fake_file is not None or dcmi_present(settings.library)


def open_backend(settings: DcmiSettings) -> GpuBackend:
    def over_fake(data: Callable[[], Any]) -> GpuBackend:
        from exporter.devices.fake_dcmi import FakeDcmi

        return DcmiBackend(FakeDcmi(data))
    library = settings.library
    return library_or_fake("dcmi", "DCMI", settings.fake_file, over_fake,
                           lambda: DcmiBackend(DcmiLibrary(library)))
