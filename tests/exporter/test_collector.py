"""The exposition, exact: values through the registry, and a golden file compared whole."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import generate_latest

from exporter.devices.base import GpuDevice, GpuProcess, GpuReading, GpuUnit
from exporter.usage.accounting import GpuHolder
from exporter.usage.collector import build_registry
from exporter.usage.counters import Counter, JobInfo
from exporter.usage.sampler import Snapshot

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"
UUID0 = "GPU-00000000-aaaa-bbbb-cccc-000000000000"
A100 = "NVIDIA A100-SXM4-80GB"
ASCEND = "Ascend 910B3"
NPU3 = "NPU-0b0c0d0e-00000000-00000000-00000000-00000000"


def snapshot() -> Snapshot:
    unit = GpuUnit("0", UUID0, A100, (GpuProcess(4300, 4 << 30, 0.5),))
    return Snapshot(
        taken_at=1_763_800_000.0,
        duration_seconds=0.025,
        gpu_seconds={("alice", "sid-4242", "0", UUID0, A100): Counter(125.5, 1_763_790_000.0)},
        gpu_energy_joules={("alice", "sid-4242", "0", UUID0, A100):
                           Counter(26_417.75, 1_763_790_000.0)},
        cpu_seconds={("alice", "sid-4242"): Counter(311.42, 1_763_790_000.0),
                     ("bob", "exp7"): Counter(2.0, 1_763_795_000.0)},
        jobs={("alice", "sid-4242"): JobInfo("train.py", "session", 1_763_800_000.0,
                                             framework="torch", script="train.py",
                                             args="--lr 3 --token <redacted>",
                                             cwd="/home/alice/proj", started=1_763_789_990.0),
              ("bob", "exp7"): JobInfo("sim", "env", 1_763_800_000.0)},
        job_memory_bytes={("alice", "sid-4242"): 2 << 30, ("bob", "exp7"): 1 << 20},
        job_processes={("alice", "sid-4242"): 3, ("bob", "exp7"): 1},
        holders=(GpuHolder(unit, 4300, "alice", "sid-4242", 4 << 30, 0.5),),
        gpus=GpuReading("550.54.15", (
            GpuDevice(0, UUID0, A100, utilization_ratio=0.37, memory_utilization_ratio=0.1,
                      memory_used_bytes=4 << 30, memory_total_bytes=80 << 30,
                      temperature_celsius=55.0, temperature_limit_celsius=87.0,
                      power_watts=210.5, ecc_corrected_total=0, ecc_uncorrected_total=0,
                      units=(unit,)),
            GpuDevice(1, "GPU-lost", "", lost=True),
            # supports nothing optional: no samples at all for those, never NaN or 0
            GpuDevice(2, "GPU-bare", "Tesla K80", units=(GpuUnit("2", "GPU-bare", "Tesla K80"),)),
            # an Ascend NPU read through DCMI: its own driver, its health, no per-process SM
            GpuDevice(3, NPU3, ASCEND, vendor="huawei", driver_version="24.1.rc2", health=0,
                      utilization_ratio=0.9, memory_used_bytes=30 << 30,
                      memory_total_bytes=64 << 30, temperature_celsius=48.0,
                      units=(GpuUnit("3", NPU3, ASCEND, (GpuProcess(4400, 30 << 30),)),)),
        )),
        xid_errors={(0, UUID0, 79): Counter(1.0, 1_763_799_000.0)},
        collectors={"nvml": (True, 0.004), "dcmi": (True, 0.003), "proc": (True, 0.02),
                    "state": (True, 0.001)},
        unattributed_seconds={("3f2a9c1b7d4e", "pytorch:24.01", "3", ASCEND):
                              Counter(42.0, 1_763_799_500.0)},
    )


def test_values_through_the_registry() -> None:
    registry = build_registry(snapshot, "gpu07")
    get = registry.get_sample_value
    job = {"user": "alice", "job": "sid-4242"}
    gpu_labels = {**job, "gpu": "0", "gpu_uuid": UUID0, "gpu_model": A100}
    assert get("gpuacct_job_gpu_seconds_total", gpu_labels) == 125.5
    assert get("gpuacct_job_gpu_seconds_created", gpu_labels) == 1_763_790_000.0
    assert get("gpuacct_job_cpu_seconds_total", job) == 311.42
    assert get("gpuacct_job_gpu_energy_joules_total", gpu_labels) == 26_417.75
    assert get("gpuacct_gpu_up", {"gpu": "1", "gpu_uuid": "GPU-lost"}) == 0
    assert get("gpuacct_gpu_power_watts", {"gpu": "2", "gpu_uuid": "GPU-bare"}) is None
    assert get("gpuacct_gpu_info", {"gpu": "2", "gpu_uuid": "GPU-bare", "gpu_model": "Tesla K80",
                                    "vendor": "nvidia", "driver_version": "550.54.15",
                                    "parent_uuid": ""}) == 1
    assert get("gpuacct_gpu_info", {"gpu": "3", "gpu_uuid": NPU3, "gpu_model": ASCEND,
                                    "vendor": "huawei", "driver_version": "24.1.rc2",
                                    "parent_uuid": ""}) == 1
    assert get("gpuacct_gpu_health", {"gpu": "3", "gpu_uuid": NPU3}) == 0
    assert get("gpuacct_gpu_temperature_limit_celsius", {"gpu": "0", "gpu_uuid": UUID0}) == 87
    assert get("gpuacct_job_start_time_seconds", job) == 1_763_789_990.0
    assert get("gpuacct_unattributed_gpu_seconds_total", {
        "node": "gpu07", "container": "3f2a9c1b7d4e", "image": "pytorch:24.01", "gpu": "3",
        "gpu_model": ASCEND}) == 42.0


def test_golden_exposition() -> None:
    text = generate_latest(build_registry(snapshot, "gpu07")).decode()
    if os.environ.get("GPUACCT_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert "NaN" not in text
