"""The real NVML backend code, driven by the data-driven fake NVML."""

from __future__ import annotations

import pynvml
import pytest

from exporter.devices.base import GpuUnavailable
from exporter.devices.fake_nvml import FakeNvml
from exporter.devices.nvml import NvmlBackend, check_distribution
from tests.fixtures.gpus import GIB, RTX3090, FakeGpus, device


def backend(gpus: FakeGpus) -> NvmlBackend:
    return NvmlBackend(FakeNvml(gpus))


def test_fake_raises_pynvmls_own_error_classes() -> None:
    fake = FakeNvml(FakeGpus([device(0, lost=True)]))
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetUUID((0, None))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(5)


def test_pynvml_comes_from_nvidia_ml_py() -> None:
    assert check_distribution() is None


def test_reads_devices_and_processes() -> None:
    gpus = FakeGpus([device(0, utilization=37, memory_used=3 * GIB), device(1, name=RTX3090)])
    gpus.put(0, pid=101, used_memory=2 * GIB, sm_util=60)
    gpus.put(0, pid=102, used_memory=None, sm_util=None)
    reading = backend(gpus).read()
    assert reading.driver_version == "550.54.15"
    d0, d1 = reading.devices
    assert (d0.index, d0.model, d0.lost) == (0, "NVIDIA A100-SXM4-80GB", False)
    assert d0.utilization_ratio == pytest.approx(0.37)
    assert d0.memory_used_bytes == 3 * GIB and d0.memory_total_bytes == 80 * GIB
    assert d0.temperature_celsius == 40 and d0.power_watts == 60.0
    assert (d0.ecc_corrected_total, d0.ecc_uncorrected_total) == (0, 0)
    (unit,) = d0.units
    assert (unit.label, unit.uuid) == ("0", d0.uuid)
    by_pid = {p.pid: p for p in unit.processes}
    assert by_pid[101].used_memory_bytes == 2 * GIB and by_pid[101].sm_ratio == pytest.approx(0.6)
    assert by_pid[102].used_memory_bytes is None and by_pid[102].sm_ratio is None
    assert d1.model == RTX3090 and d1.units[0].processes == ()


def test_unsupported_values_are_none_not_zero() -> None:
    dev = device(0)
    del dev["power_mw"], dev["ecc"]
    dev["errors"] = {"nvmlDeviceGetTemperature": "NOT_SUPPORTED",
                     "nvmlDeviceGetGraphicsRunningProcesses": "NOT_SUPPORTED"}
    (d0,) = backend(FakeGpus([dev])).read().devices
    assert d0.power_watts is None and d0.temperature_celsius is None
    assert d0.ecc_corrected_total is None
    assert d0.utilization_ratio == 0.0  # supported, and really zero


def test_one_gpu_lost_others_still_read() -> None:
    gpus = FakeGpus([device(0), device(1)])
    gpus.put(1, pid=201)
    nvml = backend(gpus)
    assert [d.lost for d in nvml.read().devices] == [False, False]
    gpus.set(0, lost=True)
    d0, d1 = nvml.read().devices
    assert d0.lost and d0.uuid == device(0)["uuid"]  # uuid remembered from before it fell off
    assert not d1.lost and [p.pid for p in d1.units[0].processes] == [201]


def test_no_driver_is_unavailable() -> None:
    gpus = FakeGpus([])
    gpus.data["init_error"] = "DRIVER_NOT_LOADED"
    with pytest.raises(GpuUnavailable, match="Driver Not Loaded"):
        backend(gpus)


def test_mig_instances_are_separate_units() -> None:
    mig = [{"uuid": "MIG-aaaa", "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "processes": []},
           None,  # an empty slot: NOT_FOUND
           {"uuid": "MIG-cccc", "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "processes": []}]
    gpus = FakeGpus([device(0, mig=mig)])
    gpus.put(0, pid=301, mig=0)
    gpus.put(0, pid=302, mig=2)
    (d0,) = backend(gpus).read().devices
    assert [(u.label, u.uuid, u.model) for u in d0.units] == [
        ("0/mig0", "MIG-aaaa", "NVIDIA A100-SXM4-80GB MIG 3g.40gb"),
        ("0/mig2", "MIG-cccc", "NVIDIA A100-SXM4-80GB MIG 1g.10gb"),
    ]
    assert [[p.pid for p in u.processes] for u in d0.units] == [[301], [302]]


def test_a_mig_instances_own_activity_comes_from_gpm_between_two_readings() -> None:
    """NVML has no per-process utilisation on MIG, nor the GPU's utilisation in MIG mode; with
    GPM (Hopper on) each instance's SM activity is measured between two samples."""
    mig = [{"uuid": "MIG-aaaa", "name": "H100 MIG 3g.40gb", "processes": [], "sm_activity": 0},
           {"uuid": "MIG-bbbb", "name": "H100 MIG 3g.40gb", "processes": [], "sm_activity": 64}]
    gpus = FakeGpus([device(0, mig=mig, gpm=True), device(1, mig=[dict(mig[0])])])
    gpus.put(0, pid=301, mig=0, sm_util=50)  # a per-process figure NVML will not give on MIG
    nvml = backend(gpus)
    first = nvml.read().devices
    assert [u.utilization_ratio for d in first for u in d.units] == [None, None, None]
    assert first[0].utilization_ratio is None  # MIG mode: NOT_SUPPORTED
    with_gpm, without = nvml.read().devices
    assert [u.utilization_ratio for u in with_gpm.units] == [0.0, 0.64]
    assert [u.utilization_ratio for u in without.units] == [None]  # no GPM: not known
    assert with_gpm.units[0].processes[0].sm_ratio is None


def test_xid_errors_are_delivered_once() -> None:
    gpus = FakeGpus([device(0), device(1, xid_events=[79])])
    nvml = backend(gpus)
    assert [d.xid_errors for d in nvml.read().devices] == [(), (79,)]
    assert [d.xid_errors for d in nvml.read().devices] == [(), ()]
    gpus.set(1, xid_events=[79, 48])
    assert [d.xid_errors for d in nvml.read().devices] == [(), (48,)]


def test_sm_utilisation_needs_new_samples() -> None:
    gpus = FakeGpus([device(0)])
    gpus.put(0, pid=401, sm_util=25)
    nvml = backend(gpus)
    assert nvml.read().devices[0].units[0].processes[0].sm_ratio == pytest.approx(0.25)
    gpus.remove(401)
    gpus.put(0, pid=401, sm_util=None)  # no sample newer than the last one: NOT_FOUND
    assert nvml.read().devices[0].units[0].processes[0].sm_ratio is None
