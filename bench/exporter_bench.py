"""Benchmark: gpuacct-exporter against prometheus-process-exporter on the same 1,000 processes.

Spawns 1,000 real processes of 4 test users in 50 jobs, puts 64 of them on 8 fake GPUs, then
measures, in the same run:
  - one sampling cycle's CPU time (gpuacct; in-process, warm) against one scrape's CPU time of
    prometheus-process-exporter grouping by user (CPU of its process per scrape);
  - /metrics latency (p50, p99) of both, served by their own processes;
  - resident memory of both processes;
  - the cost of idle-GPU counting: the cycle with every GPU process idle-holding (0% at 1 GiB,
    each one tracked) against the same cycle with idle counting off, alternated.
Run as root: .venv/bin/python bench/exporter_bench.py   (needs prometheus-process-exporter)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import percentile

from exporter.devices.fake_nvml import FakeNvml, file_source
from exporter.devices.node import Devices
from exporter.devices.nvml import NvmlBackend
from exporter.usage.sampler import Sampler
from gpuacct.config import ExporterSettings, IdleSettings
from stack.process import ManagedProcess, free_port

USERS = [f"gab-u{i}" for i in range(4)]
PROCESSES, JOBS, GPUS, GPU_PROCESSES = 1000, 50, 8, 64
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latencies(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        out.append(time.perf_counter() - t)
    return out


def spawn(users: list[pwd.struct_passwd]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(PROCESSES):
        u = users[i % len(users)]
        procs.append(subprocess.Popen(
            ["sleep", "3600"], user=u.pw_uid, group=u.pw_gid, extra_groups=[],
            env={"GPUACCT_JOB": f"job-{i % JOBS}"}, stdin=subprocess.DEVNULL))
    return procs


def fake_gpus(pids: list[int], path: Path, sm_util: int = 40) -> None:
    devices = []
    for g in range(GPUS):
        mine = pids[g::GPUS][: GPU_PROCESSES // GPUS]
        devices.append({
            "uuid": f"GPU-bench-{g:04d}", "name": "NVIDIA A100-SXM4-80GB",
            "memory_total": 80 << 30, "memory_used": len(mine) << 30, "utilization": 90,
            "memory_utilization": 40, "temperature": 60, "power_mw": 300_000,
            "ecc": {"corrected": 0, "uncorrected": 0},
            "processes": [{"pid": pid, "used_memory": 1 << 30, "sm_util": sm_util}
                          for pid in mine]})
    path.write_text(json.dumps({"driver_version": "550.54.15", "devices": devices}))


def measure_gpuacct(work: Path, gpu_file: Path, servers: list[ManagedProcess]
                    ) -> tuple[float, float, list[float], float]:
    """Warm cycle CPU (median of 30), cold first cycle CPU, /metrics latencies, RSS in MB."""
    settings = ExporterSettings(state_file=work / "state.json")
    sampler = Sampler(settings, Devices([("nvml", NvmlBackend(FakeNvml(file_source(gpu_file))))]))
    t = time.process_time()
    sampler.cycle()
    cold = time.process_time() - t
    cycles = []
    for _ in range(30):
        t = time.process_time()
        sampler.cycle()
        cycles.append(time.process_time() - t)

    port = free_port()
    config = work / "gpuacct.yaml"
    config.write_text(f"exporter:\n  state_file: {work / 'state2.json'}\n"
                      f"  nvml: {{backend: fake, fake_file: {gpu_file}}}\n")
    exporter = ManagedProcess(
        "exporter", [sys.executable, "-m", "exporter", "--config", str(config), "run",
                     "--web.listen-address", f"127.0.0.1:{port}"],
        work / "exporter.log", f"http://127.0.0.1:{port}/metrics")
    servers.append(exporter.start().wait_ready())
    time.sleep(6)  # a second cycle: identities are cached, as in steady state
    lat = latencies(f"http://127.0.0.1:{port}/metrics", 300)
    return statistics.median(cycles), cold, lat, rss_mb(exporter.pid)


def measure_idle_counting(work: Path, pids: list[int]) -> tuple[float, float]:
    """Median warm cycle CPU with idle counting on (every GPU process idle) and off."""
    gpu_file = work / "idle-gpus.json"
    fake_gpus(pids, gpu_file, sm_util=0)
    samplers = {}
    for name, idle in (("on", IdleSettings(after_seconds=0)), ("off", None)):
        settings = ExporterSettings(state_file=work / f"state-idle-{name}.json", idle=idle)
        samplers[name] = Sampler(settings, Devices([("nvml", NvmlBackend(FakeNvml(
            file_source(gpu_file))))]))
        samplers[name].cycle()
    cycles: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(30):
        for name, sampler in samplers.items():
            t = time.process_time()
            sampler.cycle()
            cycles[name].append(time.process_time() - t)
    assert samplers["on"].snapshot.gpu_idle_seconds, "nothing was counted idle"
    return statistics.median(cycles["on"]), statistics.median(cycles["off"])


def measure_peer(peer: str, work: Path, label: str, extra: list[str],
                 servers: list[ManagedProcess]) -> tuple[float, list[float], float]:
    """process-exporter grouping by user: CPU per scrape, latencies, RSS in MB."""
    config = work / "process-exporter.yml"
    config.write_text('process_names:\n  - name: "{{.Username}}"\n    cmdline: [".+"]\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = ManagedProcess(f"process-exporter-{label}",
                          [peer, "-config.path", str(config),
                           "-web.listen-address", f"127.0.0.1:{port}", *extra],
                          work / f"pe-{label}.log", url)
    servers.append(proc.start().wait_ready())
    latencies(url, 2)  # its first scrape also reads what never changes
    before = cpu_seconds(proc.pid)
    lat = latencies(url, 20)
    return (cpu_seconds(proc.pid) - before) / 20, lat, rss_mb(proc.pid)


def report(ours: float, cold: float, our_lat: list[float], our_rss: float,
           peers: dict[str, tuple[float, list[float], float]]) -> None:
    print()
    print(f"{'':34} {'CPU/cycle or scrape':>20} {'p50 /metrics':>13} {'p99 /metrics':>13}"
          f" {'RSS':>8}")
    rows = [("gpuacct-exporter (sampling cycle)", ours, our_lat, our_rss)]
    rows += [(f"process-exporter by user, {k}", *v) for k, v in peers.items()]
    for name, cpu, lat, rss in rows:
        print(f"{name:34} {cpu * 1000:17.1f} ms {percentile(lat, 50) * 1000:10.1f} ms"
              f" {percentile(lat, 99) * 1000:10.1f} ms {rss:5.0f} MB")
    print()
    print(f"gpuacct cold first cycle (reads identities once): {cold * 1000:.1f} ms")
    for label, (cpu, _, _) in peers.items():
        print(f"ratio gpuacct cycle CPU / process-exporter ({label}) scrape CPU: "
              f"{ours / cpu:.3f}  (target <= 0.2)")
    print(f"gpuacct /metrics p99: {percentile(our_lat, 99) * 1000:.1f} ms (target < 50 ms); "
          f"RSS {our_rss:.0f} MB (target < 80 MB)")


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the benchmark creates users and reads their /proc", file=sys.stderr)
        return 2
    peer = shutil.which("prometheus-process-exporter")
    if peer is None:
        print("apt-get install prometheus-process-exporter first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpuacct-bench-"))
    for name in USERS:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, check=False)
    procs = spawn([pwd.getpwnam(n) for n in USERS])
    servers: list[ManagedProcess] = []
    try:
        time.sleep(1)
        gpu_file = work / "gpus.json"
        fake_gpus([pr.pid for pr in procs], gpu_file)
        total = sum(1 for d in os.listdir("/proc") if d.isdigit())
        print(f"{PROCESSES} benchmark processes ({total} in /proc), {JOBS} jobs, "
              f"{GPUS} fake GPUs with {GPU_PROCESSES} GPU processes")
        ours, cold, our_lat, our_rss = measure_gpuacct(work, gpu_file, servers)
        peers = {label: measure_peer(peer, work, label, extra, servers)
                 for label, extra in (("default", []),
                                      ("lean", ["-gather-smaps=false", "-threads=false"]))}
        report(ours, cold, our_lat, our_rss, peers)
        on, off = measure_idle_counting(work, [pr.pid for pr in procs])
        print(f"idle-GPU counting, all {GPU_PROCESSES} GPU processes idle: cycle CPU "
              f"{on * 1000:.1f} ms on, {off * 1000:.1f} ms off; ratio {on / off:.3f}")
        return 0
    finally:
        for server in servers:
            server.stop()
        for pr in procs:
            pr.kill()
        for pr in procs:
            pr.wait()
        for name in USERS:
            subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
