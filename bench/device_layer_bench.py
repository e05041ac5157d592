"""Benchmark: what the node's device layer costs over reading one library directly, and what a
window of job tracking costs the billing engine.

  1. One reading of 8 GPUs with 64 processes: `NvmlBackend.read()` straight (the baseline,
     what the exporter did before it had several backends) against `Devices.read()` over the
     same backend, and over NVML + AMD SMI + DCMI fakes of 8 devices each; alternated, medians.
  2. The job store's `record()` of one window with 1,000 and 10,000 running jobs (all seen
     again, the steady state) on SQLite, against the window it runs in (60 s).

Run: .venv/bin/python bench/device_layer_bench.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.devices.node import Devices
from jobstore.store import JobSeen, JobStore
from tests.fixtures.gpus import FakeGpus, device

ROUNDS = 400


def fake(vendor: str) -> FakeGpus:
    gpus = FakeGpus([device(i, vendor=vendor) for i in range(8)], vendor=vendor)
    for i in range(64):
        gpus.put(i % 8, 10_000 + i, used_memory=1 << 30, sm_util=50)
    return gpus


def median_ms(read: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        read()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def device_layer() -> None:
    nvidia = fake("nvidia")
    raw = nvidia.backend()
    one = Devices([("nvml", nvidia.backend())])
    three = Devices([("nvml", fake("nvidia").backend()), ("amdsmi", fake("amd").backend()),
                     ("dcmi", fake("huawei").backend())])
    results: dict[str, list[float]] = {"raw": [], "one": [], "three": []}
    for _ in range(5):  # alternated, so drift in the machine hits all three alike
        results["raw"].append(median_ms(raw.read))
        results["one"].append(median_ms(one.read))
        results["three"].append(median_ms(three.read))
    raw_ms, one_ms, three_ms = (statistics.median(results[k]) for k in ("raw", "one", "three"))
    print(f"NvmlBackend.read(), 8 GPUs, 64 processes (baseline): {raw_ms:.3f} ms")
    print(f"Devices.read() over it:                               {one_ms:.3f} ms "
          f"({one_ms / raw_ms:.3f}x)")
    print(f"Devices.read() over NVML + AMD SMI + DCMI, 8 each:    {three_ms:.3f} ms "
          f"({three_ms / raw_ms:.3f}x the one-library reading, 3x the devices)")


def job_store() -> None:
    for count in (1_000, 10_000):
        with tempfile.TemporaryDirectory() as d:
            store = JobStore(Path(d) / "jobs.sqlite3")
            nodes = [f"gpu{n:03d}:9835" for n in range(max(1, count // 100))]
            seen = [JobSeen(nodes[i % len(nodes)], f"user{i % 50}", f"job-{i}", 1.8e9 + i,
                            name="train.py", framework="torch", script="train.py",
                            args="--lr 3e-4 --token <redacted>", cwd="/home/u/proj")
                    for i in range(count)]
            store.record(1.9e9, nodes, seen, 300)  # the first window inserts them
            times = []
            for w in range(1, 11):
                t = time.perf_counter()
                store.record(1.9e9 + 60 * w, nodes, seen, 300)
                times.append(time.perf_counter() - t)
            took = statistics.median(times)
            print(f"job store, {count:,} running jobs on {len(nodes)} nodes: record() "
                  f"{took * 1000:.1f} ms a window ({took / 60:.5f} of a 60 s window)")
            store.close()


if __name__ == "__main__":
    device_layer()
    job_store()
