"""AMD SMI and DCMI beside NVML: each vendor's backend over its data-driven fake, the ctypes
layer over a real shared library, and what each failure does to the node's reading."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from exporter.devices.amd_smi import AmdSmiBackend, load_amdsmi
from exporter.devices.base import GpuUnavailable, Retrying
from exporter.devices.dcmi import DcmiBackend, DcmiError, DcmiLibrary, dcmi_present
from exporter.devices.fake_amd_smi import FakeAmdSmi
from exporter.devices.fake_dcmi import FakeDcmi
from exporter.devices.node import Devices, open_devices
from gpuacct.config import ExporterSettings
from tests.fixtures.amd_smi_stub import import_amdsmi
from tests.fixtures.gpus import ASCEND910B, GIB, MI300X, FakeGpus, device

amdsmi = import_amdsmi()  # the real package, over a stub libamd_smi.so (no ROCm here)
STUB = Path(__file__).parent.parent / "fixtures" / "c" / "dcmi_stub.c"


def amd(*devices: dict[str, object]) -> FakeGpus:
    return FakeGpus(list(devices) or [device(0, vendor="amd")], vendor="amd")


def npu(*devices: dict[str, object]) -> FakeGpus:
    return FakeGpus(list(devices) or [device(0, vendor="huawei")], vendor="huawei")


def test_the_fake_amd_smi_raises_amdsmis_own_exceptions() -> None:
    fake = FakeAmdSmi(amd(device(0, vendor="amd", lost=True)))
    fake.amdsmi_init(fake.AmdSmiInitFlags.INIT_AMD_GPUS)
    with pytest.raises(amdsmi.AmdSmiLibraryException) as lost:
        fake.amdsmi_get_gpu_device_uuid(0)
    assert lost.value.get_error_code() == amdsmi.amdsmi_wrapper.AMDSMI_STATUS_NOT_FOUND
    with pytest.raises(amdsmi.AmdSmiLibraryException) as invalid:
        fake.amdsmi_get_gpu_device_uuid(7)
    assert invalid.value.get_error_code() == amdsmi.amdsmi_wrapper.AMDSMI_STATUS_INVAL


def test_the_fake_dcmi_fails_with_dcmis_own_codes() -> None:
    fake = FakeDcmi(npu(device(0, vendor="huawei", lost=True)))
    fake.dcmi_init()
    with pytest.raises(DcmiError) as lost:
        fake.dcmi_get_device_temperature(0, 0)
    assert (lost.value.code, str(lost.value)) == (-8008, "DCMI_ERROR_DEVICE_NOT_EXIST (-8008)")
    with pytest.raises(DcmiError, match="INVALID_DEVICE_ID"):
        fake.dcmi_get_device_temperature(5, 0)


def test_amd_smi_reads_devices_and_processes() -> None:
    gpus = amd(device(0, vendor="amd", utilization=37, memory_used=3 * GIB,
                      temperature_limit=100, driver_version="6.8.5"),
               device(1, vendor="amd", hotspot_only=True))
    gpus.put(0, pid=101, used_memory=2 * GIB, sm_util=50)
    gpus.put(0, pid=102, used_memory=None, sm_util=None)
    reading = gpus.backend().read()
    assert reading.problems == () and reading.driver_version == "6.8.5"
    d0, d1 = reading.devices
    assert (d0.vendor, d0.model, d0.uuid) == ("amd", MI300X, device(0, vendor="amd")["uuid"])
    assert d0.utilization_ratio == pytest.approx(0.37)
    assert (d0.memory_used_bytes, d0.memory_total_bytes) == (3 * GIB, 80 * GIB)
    assert (d0.temperature_celsius, d0.temperature_limit_celsius) == (40, 100)
    assert d0.power_watts == 60.0 and (d0.ecc_corrected_total, d0.ecc_uncorrected_total) == (0, 0)
    by_pid = {p.pid: p for p in d0.units[0].processes}
    assert by_pid[101].used_memory_bytes == 2 * GIB
    assert by_pid[101].sm_ratio == pytest.approx(152 / 304)  # compute units occupied
    assert by_pid[102].used_memory_bytes is None and by_pid[102].sm_ratio is None
    assert d1.temperature_celsius == 41  # an MI300 has only its hotspot sensor


def test_amd_smi_is_polled_no_faster_than_it_allows() -> None:
    gpus = amd()
    fake = FakeAmdSmi(gpus)
    backend = AmdSmiBackend(fake, min_interval=0.5)
    first = backend.read()
    for _ in range(5):
        assert backend.read() is first  # within the interval: the same reading, no call
    assert fake.calls.count("amdsmi_get_processor_handles") == 1
    time.sleep(0.5)
    gpus.data["devices"][0]["errors"] = {"amdsmi_get_gpu_process_list": "RETRY"}
    assert backend.read() is first  # RETRY: keep what we had, no failure
    gpus.data["devices"][0]["errors"] = {"amdsmi_get_processor_handles": "BUSY"}
    gpus.data["errors"] = {"amdsmi_get_processor_handles": "BUSY"}
    time.sleep(0.5)
    assert backend.read() is first


def test_dcmi_reads_chips_and_their_processes() -> None:
    chips = npu(device(0, vendor="huawei", utilization=90, memory_used=30 * GIB,
                       card=0, chip=0),
                device(1, vendor="huawei", card=0, chip=1, health=2))
    chips.put(0, pid=201, used_memory=30 * GIB)
    reading = chips.backend().read()
    d0, d1 = reading.devices
    assert (d0.vendor, d0.model, d0.uuid) == ("huawei", ASCEND910B,
                                              device(0, vendor="huawei")["uuid"])
    assert d0.utilization_ratio == pytest.approx(0.9) and d0.health == 0
    assert (d0.memory_used_bytes, d0.memory_total_bytes) == (30 * GIB, 80 * GIB)
    assert d0.power_watts == 60.0 and d0.temperature_celsius == 40
    assert [(p.pid, p.used_memory_bytes, p.sm_ratio) for p in d0.units[0].processes] == [
        (201, 30 * GIB, None)]  # DCMI gives memory per process, nothing more
    assert d1.health == 2 and not d1.lost


@pytest.fixture(scope="module")
def dcmi_library(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("dcmi") / "libdcmi.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(STUB)], check=True,
                   timeout=120)
    return str(path)


def test_the_ctypes_layer_over_a_real_shared_library(dcmi_library: str) -> None:
    reading = DcmiBackend(DcmiLibrary(dcmi_library)).read()
    d0, d1 = reading.devices
    assert (d0.index, d0.model, d0.uuid) == (
        0, "Ascend 910B3", "NPU-000000a0-000000a1-000000a2-000000a3-000000a4")
    assert (d0.temperature_celsius, d0.power_watts, d0.utilization_ratio) == (41, 123.4, 0.55)
    assert (d0.memory_total_bytes, d0.memory_used_bytes) == (64 * GIB, 2 * GIB)
    assert (d0.ecc_corrected_total, d0.ecc_uncorrected_total, d0.health) == (7, 2, 0)
    assert [(p.pid, p.used_memory_bytes) for p in d0.units[0].processes] == [
        (4242, 3 * GIB), (4343, 1 << 20)]
    assert d1.power_watts is None and d1.health == 1 and d1.units[0].processes == ()
    assert reading.unsupported == ("NPU 1 power: DCMI_ERROR_NOT_SUPPORT (-8255)",)
    assert dcmi_present(dcmi_library) and not dcmi_present("/nonexistent/libdcmi.so")


# -- failure modes: the exporter runs on, the collector says failed, the log says it once


def cycle(devices: Devices, times: int = 3) -> dict[str, tuple[bool, float]]:
    collectors: dict[str, tuple[bool, float]] = {}
    for _ in range(times):
        _, collectors = devices.read()
    return collectors


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_missing_libraries_are_named_once_and_fail_their_collectors(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    devices = Devices([
        ("dcmi", Retrying("dcmi", lambda: DcmiBackend(DcmiLibrary("/nonexistent/libdcmi.so")))),
        ("amdsmi", Retrying("amdsmi", lambda: (_ for _ in ()).throw(
            GpuUnavailable("the amdsmi library cannot be loaded")))),
    ])
    collectors = cycle(devices)
    assert {name: ok for name, (ok, _) in collectors.items()} == {"dcmi": False,
                                                                  "amdsmi": False}
    assert logged(caplog, "dcmi: not available (DCMI cannot be loaded from "
                          "/nonexistent/libdcmi.so") == 1
    assert logged(caplog, "amdsmi: not available (the amdsmi library cannot be loaded)") == 1


def test_amdsmi_missing_is_unavailable_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ROCm is not installed, importing amdsmi fails (a KeyError from inside it)."""
    result = subprocess.run(
        ["python3", "-c", "from exporter.devices.amd_smi import amdsmi_present, load_amdsmi\n"
         "print(amdsmi_present())\nload_amdsmi()"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                         "PYTHONPATH": str(Path.cwd())},
        executable=__import__("sys").executable)
    assert result.stdout == "False\n"  # nothing amdsmi printed itself
    assert "GpuUnavailable: the amdsmi library cannot be loaded" in result.stderr


@pytest.mark.parametrize("fakes, init_error", [(amd, "DRIVER_NOT_LOADED"),
                                               (npu, "NOT_REDAY")])
def test_init_failures_are_named_once(caplog: pytest.LogCaptureFixture, fakes: object,
                                      init_error: str) -> None:
    caplog.set_level(logging.INFO)
    gpus: FakeGpus = fakes()  # type: ignore[operator]
    gpus.data["init_error"] = init_error
    devices = Devices([(gpus.backend_name, Retrying(gpus.backend_name, gpus.backend, 0.0))])
    assert cycle(devices)[gpus.backend_name][0] is False
    assert logged(caplog, "could not start") == 1
    del gpus.data["init_error"]
    assert cycle(devices, 1)[gpus.backend_name][0] is True  # the driver came: read, no restart
    assert logged(caplog, f"{gpus.backend_name} ready") == 1


@pytest.mark.parametrize("vendor", ["nvidia", "amd", "huawei"])
def test_a_lost_device_fails_the_collector_and_is_named_once(
        caplog: pytest.LogCaptureFixture, vendor: str) -> None:
    caplog.set_level(logging.INFO)
    gpus = FakeGpus([device(0, vendor=vendor), device(1, vendor=vendor)], vendor=vendor)
    devices = Devices([(gpus.backend_name, gpus.backend())])
    gpus.set(0, lost=True)
    reading = devices.read()[0]
    assert reading is not None and [d.lost for d in reading.devices] == [True, False]
    assert cycle(devices)[gpus.backend_name][0] is False
    assert logged(caplog, "unreadable") == 1
    gpus.set(0, lost=False)
    assert cycle(devices)[gpus.backend_name][0] is True
    assert logged(caplog, "reading again in full") == 1


@pytest.mark.parametrize("vendor, power_call, process_call, code", [
    ("nvidia", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses",
     "NOT_SUPPORTED"),
    ("amd", "amdsmi_get_power_info", "amdsmi_get_gpu_process_list", "NOT_SUPPORTED"),
    ("huawei", "dcmi_get_device_power_info", "dcmi_get_device_resource_info", "NOT_SUPPORT"),
])
def test_calls_not_supported(caplog: pytest.LogCaptureFixture, vendor: str, power_call: str,
                             process_call: str, code: str) -> None:
    """A value the board lacks is left out and named once; a process list it will not give
    means nobody on it can be billed: the collector fails."""
    caplog.set_level(logging.INFO)
    gpus = FakeGpus([device(0, vendor=vendor, errors={power_call: code})], vendor=vendor)
    devices = Devices([(gpus.backend_name, gpus.backend())])
    assert cycle(devices)[gpus.backend_name][0] is True
    reading = devices.read()[0]
    assert reading is not None and reading.devices[0].power_watts is None
    assert logged(caplog, "power") == 1
    errors = {power_call: code, process_call: code}
    if vendor == "nvidia":
        errors["nvmlDeviceGetGraphicsRunningProcesses"] = code
    gpus.set(0, errors=errors)
    assert cycle(devices)[gpus.backend_name][0] is False
    assert logged(caplog, "no process list") == 1


def test_a_node_with_nvidia_amd_and_ascend_numbers_them_in_turn() -> None:
    nvidia = FakeGpus([device(0), device(1)])
    amd_gpus = amd(device(0, vendor="amd"))
    npus = npu(device(0, vendor="huawei"), device(1, vendor="huawei"))
    devices = Devices([("nvml", nvidia.backend()), ("amdsmi", amd_gpus.backend()),
                       ("dcmi", npus.backend())])
    reading, collectors = devices.read()
    assert reading is not None and all(ok for ok, _ in collectors.values())
    assert [(d.index, d.vendor, d.units[0].label) for d in reading.devices] == [
        (0, "nvidia", "0"), (1, "nvidia", "1"), (2, "amd", "2"), (3, "huawei", "3"),
        (4, "huawei", "4")]
    amd_gpus.data["init_error"] = "DRIVER_NOT_LOADED"  # read on: the AMD GPU keeps its place
    amd_gpus.set(0, lost=True)
    reading, _ = devices.read()
    assert reading is not None
    assert [(d.index, d.lost) for d in reading.devices][2:] == [(2, True), (3, False),
                                                              (4, False)]


def test_auto_reads_nvml_and_only_the_libraries_that_are_there(tmp_path: Path) -> None:
    settings = ExporterSettings.model_validate({"state_file": tmp_path / "s.json",
                                                "dcmi": {"library": "/nonexistent/libdcmi.so"}})
    devices = open_devices(settings)
    assert devices is not None
    assert [name for name, _ in devices.backends] == ["nvml", "amdsmi"]  # amdsmi imports here
    npus = npu()
    npus.path = tmp_path / "npus.json"
    npus.save()
    settings = ExporterSettings.model_validate({"state_file": tmp_path / "s.json",
                                                "backends": ["dcmi"],
                                                "dcmi": {"fake_file": str(npus.path)}})
    devices = open_devices(settings)
    assert devices is not None and [name for name, _ in devices.backends] == ["dcmi"]
    reading, collectors = devices.read()
    assert reading is not None and reading.devices[0].vendor == "huawei"
    assert collectors["dcmi"][0] is True


def test_load_amdsmi_gives_the_real_module() -> None:
    assert load_amdsmi() is amdsmi
