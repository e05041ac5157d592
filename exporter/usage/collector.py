"""Renders the sampler's latest snapshot as fresh metric families on every scrape.

Sample of the exposition (values abridged):

    gpuacct_job_gpu_seconds_total{user="alice",job="sid-4242",gpu="0",gpu_uuid="GPU-..",
                                  gpu_model="NVIDIA A100-SXM4-80GB"} 125.0
    gpuacct_job_gpu_seconds_created{...} 1.7637e+09
    gpuacct_job_cpu_seconds_total{user="alice",job="sid-4242"} 311.42
    gpuacct_job_info{user="alice",job="sid-4242",name="train.py",source="session",
                     framework="torch",script="train.py",args="--lr 3 --token <redacted>",
                     cwd="/home/alice/proj"} 1.0
    gpuacct_job_start_time_seconds{user="alice",job="sid-4242"} 1.7637e+09
    gpuacct_gpu_process_memory_bytes{gpu="0",gpu_uuid="GPU-..",pid="4300",user="alice",
                                     job="sid-4242"} 4.2e+09
    gpuacct_gpu_temperature_celsius{gpu="0",gpu_uuid="GPU-.."} 55.0
    gpuacct_exporter_collector_success{collector="nvml"} 1.0
    gpuacct_unattributed_gpu_seconds_total{node="gpu07",container="3f2a9c1b7d4e",
                                           image="pytorch:24.01",gpu="0",gpu_model=".."} 42.0
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.devices.base import GpuDevice
from exporter.usage.sampler import Snapshot
from gpuacct import __version__

JOB = ["user", "job"]
GPU = ["gpu", "gpu_uuid"]

# name, help, GpuDevice attribute
_DEVICE_GAUGES = (
    ("gpuacct_gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU.",
     "utilization_ratio"),
    ("gpuacct_gpu_memory_utilization_ratio", "Fraction of time device memory was read or written.",
     "memory_utilization_ratio"),
    ("gpuacct_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_bytes"),
    ("gpuacct_gpu_memory_total_bytes", "GPU memory in all.", "memory_total_bytes"),
    ("gpuacct_gpu_temperature_celsius", "GPU core temperature.", "temperature_celsius"),
    ("gpuacct_gpu_temperature_limit_celsius",
     "Where the device says it slows down (NVIDIA) or is critical (AMD).",
     "temperature_limit_celsius"),
    ("gpuacct_gpu_power_watts", "GPU power draw.", "power_watts"),
    ("gpuacct_gpu_health", "The device's own health verdict: 0 healthy (DCMI: 1 minor alarm, "
     "2 major, 3 critical).", "health"),
)


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], node: str = "") -> None:
        self.snapshot, self.node = snapshot, node or socket.gethostname()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield from self._jobs(snap)
        yield self._unattributed(snap)
        yield from self._gpu_processes(snap)
        if snap.gpus is not None:
            yield from self._devices(snap.gpus.devices, snap.gpus.driver_version)
        yield from self._xids(snap)
        yield from self._health(snap)

    def _jobs(self, snap: Snapshot) -> Iterator[Metric]:
        gpu = CounterMetricFamily(
            "gpuacct_job_gpu_seconds", "Seconds a job held a GPU, shared among the jobs on it.",
            labels=[*JOB, *GPU, "gpu_model"])
        for (user, job, unit, uuid, model), c in sorted(snap.gpu_seconds.items()):
            gpu.add_metric([user, job, unit, uuid, model], c.value, created=c.created)
        idle = CounterMetricFamily(
            "gpuacct_job_gpu_idle_seconds",
            "Of a job's GPU seconds, those it held GPU memory at (almost) no utilisation, once "
            "that lasted exporter.idle.after_seconds.", labels=[*JOB, *GPU, "gpu_model"])
        for (user, job, unit, uuid, model), c in sorted(snap.gpu_idle_seconds.items()):
            idle.add_metric([user, job, unit, uuid, model], c.value, created=c.created)
        energy = CounterMetricFamily(
            "gpuacct_job_gpu_energy_joules", "A job's share of a GPU's energy (the GPU's own "
            "counter, else its power over time), by its processes' SM activity.",
            labels=[*JOB, *GPU, "gpu_model"])
        for (user, job, unit, uuid, model), c in sorted(snap.gpu_energy_joules.items()):
            energy.add_metric([user, job, unit, uuid, model], c.value, created=c.created)
        cpu = CounterMetricFamily(
            "gpuacct_job_cpu_seconds", "User and system CPU seconds of a job's processes.",
            labels=JOB)
        for (user, job), c in sorted(snap.cpu_seconds.items()):
            cpu.add_metric([user, job], c.value, created=c.created)
        info = GaugeMetricFamily(
            "gpuacct_job_info", "A job seen on this node: its name, how it was told apart, its "
            "framework, script, arguments (secrets redacted) and working directory.",
            labels=[*JOB, "name", "source", "framework", "script", "args", "cwd"])
        started = GaugeMetricFamily("gpuacct_job_start_time_seconds",
                                    "When the job's earliest process started.", labels=JOB)
        for (user, job), j in sorted(snap.jobs.items()):
            info.add_metric([user, job, j.name, j.source, j.framework, j.script, j.args, j.cwd],
                            1)
            if j.started:
                started.add_metric([user, job], j.started)
        memory = GaugeMetricFamily("gpuacct_job_memory_bytes",
                                   "Resident memory of a job's live processes.", labels=JOB)
        procs = GaugeMetricFamily("gpuacct_job_processes", "Live processes of a job.", labels=JOB)
        for key in sorted(snap.job_processes):
            memory.add_metric(list(key), snap.job_memory_bytes.get(key, 0))
            procs.add_metric(list(key), snap.job_processes[key])
        folded = GaugeMetricFamily(
            "gpuacct_jobs_folded", "A user's jobs counted as the one job `overflow`, beyond "
            "exporter.max_jobs_per_user.", labels=["user"])
        for user, n in snap.folded_jobs.items():
            folded.add_metric([user], n)
        yield from (gpu, idle, energy, cpu, info, started, memory, procs, folded)

    def _unattributed(self, snap: Snapshot) -> Metric:
        nobody = CounterMetricFamily(
            "gpuacct_unattributed_gpu_seconds", "GPU seconds of root, system users and "
            "containers nobody could be found for (container \"\": not in a container).",
            labels=["node", "container", "image", "gpu", "gpu_model"])
        for (container, image, unit, model), c in sorted(snap.unattributed_seconds.items()):
            nobody.add_metric([self.node, container, image, unit, model], c.value,
                              created=c.created)
        return nobody

    def _gpu_processes(self, snap: Snapshot) -> Iterator[Metric]:
        labels = [*GPU, "pid", *JOB]
        memory = GaugeMetricFamily("gpuacct_gpu_process_memory_bytes",
                                   "GPU memory used by a process.", labels=labels)
        sm = GaugeMetricFamily("gpuacct_gpu_process_sm_utilization_ratio",
                               "Fraction of the GPU's SMs a process kept busy.", labels=labels)
        for h in snap.holders:
            values = [h.unit.label, h.unit.uuid, str(h.pid), h.user, h.job]
            if h.used_memory_bytes is not None:
                memory.add_metric(values, h.used_memory_bytes)
            if h.sm_ratio is not None:
                sm.add_metric(values, h.sm_ratio)
        yield from (memory, sm)

    def _devices(self, devices: tuple[GpuDevice, ...], driver: str | None) -> Iterator[Metric]:
        info = GaugeMetricFamily("gpuacct_gpu_info",
                                 "A GPU, MIG instance or NPU on this node, with its vendor.",
                                 labels=[*GPU, "gpu_model", "vendor", "driver_version",
                                         "parent_uuid"])
        up = GaugeMetricFamily("gpuacct_gpu_up",
                               "1 if the device answers its library, 0 if it is lost.",
                               labels=GPU)
        ecc = CounterMetricFamily("gpuacct_gpu_ecc_errors",
                                  "Memory ECC errors since the driver loaded.",
                                  labels=[*GPU, "type"])
        gauges = [GaugeMetricFamily(name, doc, labels=GPU) for name, doc, _ in _DEVICE_GAUGES]
        for d in devices:
            gpu = [str(d.index), d.uuid]
            up.add_metric(gpu, 0 if d.lost else 1)
            if d.lost:
                continue
            for unit in d.units:
                info.add_metric([unit.label, unit.uuid, unit.model, d.vendor,
                                 d.driver_version or driver or "",
                                 d.uuid if unit.uuid != d.uuid else ""], 1)
            for family, (_, _, attr) in zip(gauges, _DEVICE_GAUGES, strict=True):
                value = getattr(d, attr)
                if value is not None:
                    family.add_metric(gpu, value)
            for kind, value in (("corrected", d.ecc_corrected_total),
                                ("uncorrected", d.ecc_uncorrected_total)):
                if value is not None:
                    ecc.add_metric([*gpu, kind], value)
        yield from (info, up, ecc, *gauges)

    def _xids(self, snap: Snapshot) -> Iterator[Metric]:
        xid = CounterMetricFamily("gpuacct_gpu_xid_errors",
                                  "Critical XID errors reported since the exporter started.",
                                  labels=[*GPU, "xid"])
        for (index, uuid, code), c in sorted(snap.xid_errors.items()):
            xid.add_metric([str(index), uuid, str(code)], c.value, created=c.created)
        yield xid

    def _health(self, snap: Snapshot) -> Iterator[Metric]:
        success = GaugeMetricFamily("gpuacct_exporter_collector_success",
                                    "1 if the collector's last reading worked.",
                                    labels=["collector"])
        duration = GaugeMetricFamily("gpuacct_exporter_collector_duration_seconds",
                                     "How long the collector's last reading took.",
                                     labels=["collector"])
        for name, (ok, seconds) in sorted(snap.collectors.items()):
            success.add_metric([name], 1 if ok else 0)
            duration.add_metric([name], seconds)
        yield from (success, duration)
        if snap.taken_at:
            yield GaugeMetricFamily("gpuacct_exporter_last_sample_timestamp_seconds",
                                    "When the latest sample was taken.", value=snap.taken_at)
            yield GaugeMetricFamily("gpuacct_exporter_sample_duration_seconds",
                                    "How long the latest sampling cycle took.",
                                    value=snap.duration_seconds)
        build = GaugeMetricFamily("gpuacct_exporter_build_info", "gpuacct version.",
                                  labels=["version"])
        build.add_metric([__version__], 1)
        yield build


def build_registry(snapshot: Callable[[], Snapshot], node: str = "") -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, node))
    return registry
