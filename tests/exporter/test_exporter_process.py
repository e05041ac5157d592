"""gpuacct-exporter run as a process: no config, no driver, restarts, retention, Prometheus."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.exporter import Exporter, promtool_check_metrics
from tests.fixtures.gpus import (
    A100,
    ASCEND910B,
    MI300X,
    RTX3090,
    FakeGpus,
    device,
    exporter_config,
    exporter_environment,
)
from tests.fixtures.servers import Server, promql, wait_for
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.root, pytest.mark.integration]
Users = dict[str, UnixUser]


def values(text: str, metric: str, /) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == metric}


def value_for(text: str, metric: str, /, **match: str) -> float | None:
    for labels, value in values(text, metric).items():
        if match.items() <= dict(labels).items():
            return value
    return None


def test_no_config_no_driver_serves_cpu_metrics_and_promtool_is_clean(
        start_exporter: Callable[..., Exporter], processes: Processes,
        test_users: Users) -> None:
    alice = test_users["alice"]
    busy = processes.python(alice, "train.py", "30", env={"GPUACCT_JOB": "cpu-only"})
    wait_until_exec(busy, "train.py")
    default_state = Path("/var/lib/gpuacct/exporter-state.json")
    existed = default_state.exists()
    try:
        exporter = start_exporter(None)  # no --config: every default
        text = wait_for(lambda: (t := exporter.scrape()) and
                        (value_for(t, "gpuacct_job_cpu_seconds_total", job="cpu-only") or 0) > 0.5
                        and t, timeout=20, what="CPU seconds")
    finally:
        if not existed:
            default_state.unlink(missing_ok=True)
    check = promtool_check_metrics(text)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert value_for(text, "gpuacct_exporter_collector_success", collector="nvml") == 0
    assert value_for(text, "gpuacct_exporter_collector_success", collector="proc") == 1
    assert value_for(text, "gpuacct_job_info", user=alice.name, job="cpu-only",
                     name="train.py") == 1
    assert "gpuacct_job_gpu_seconds_total{" not in text
    assert "NaN" not in text
    log = exporter.process.log_path.read_text()
    assert log.count("nvml: not available (") == 1


def test_a_node_of_three_vendors_is_reported_whole_and_passes_promtool(
        start_exporter: Callable[..., Exporter], processes: Processes, test_users: Users,
        tmp_path: Path) -> None:
    gpus = FakeGpus([device(0), device(1, name=RTX3090, xid_events=[79])],
                    path=tmp_path / "gpus.json")
    amd = FakeGpus([device(0, vendor="amd")], path=tmp_path / "amd.json", vendor="amd")
    npus = FakeGpus([device(0, vendor="huawei")], path=tmp_path / "npus.json",
                    vendor="huawei")
    alice, bob = test_users["alice"], test_users["bob"]
    a = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "a"})
    b = processes.python(bob, "idle.py", env={"GPUACCT_JOB": "b"})
    c = processes.python(bob, "idle.py", env={"GPUACCT_JOB": "c"})
    for proc, fake in ((a, gpus), (b, amd), (c, npus)):
        wait_until_exec(proc, "idle.py")
        fake.put(0, proc.pid)
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.2, "state_file": str(tmp_path / "state.json"),
        **exporter_config(gpus, amd, npus)}}, env=exporter_environment(amd))
    held = ((alice, "a", "0"), (bob, "b", "2"), (bob, "c", "3"))
    text = wait_for(lambda: (t := exporter.scrape()) and all(
        (value_for(t, "gpuacct_job_gpu_seconds_total", user=u.name, job=j, gpu=g) or 0) > 0
        for u, j, g in held) and t, timeout=10, what="GPU seconds on every device")
    check = promtool_check_metrics(text)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert value_for(text, "gpuacct_gpu_xid_errors_total", gpu="1", xid="79") == 1
    assert value_for(text, "gpuacct_gpu_power_watts", gpu="0") == 60.0
    # Numbered one after the other, each with its vendor; every backend read in full.
    assert {(labels["gpu"], labels["vendor"], labels["gpu_model"]) for labels in
            (dict(k) for k in values(text, "gpuacct_gpu_info"))} == {
        ("0", "nvidia", A100), ("1", "nvidia", RTX3090), ("2", "amd", MI300X),
        ("3", "huawei", ASCEND910B)}
    for collector in ("nvml", "amdsmi", "dcmi", "proc"):
        assert value_for(text, "gpuacct_exporter_collector_success", collector=collector) == 1


def test_kill_9_and_restart_continue_the_counters(
        start_exporter: Callable[..., Exporter], processes: Processes, test_users: Users,
        tmp_path: Path) -> None:
    interval = 0.5
    gpus = FakeGpus([device(0)], path=tmp_path / "gpus.json")
    busy = processes.python(test_users["alice"], "train.py", "60", env={"GPUACCT_JOB": "long"})
    wait_until_exec(busy, "train.py")
    gpus.put(0, busy.pid)
    exporter = start_exporter({"exporter": {
        "interval_seconds": interval, "state_file": str(tmp_path / "state.json"),
        "nvml": {"backend": "fake", "fake_file": str(gpus.path)}}})

    def gpu(text: str) -> float:
        return value_for(text, "gpuacct_job_gpu_seconds_total", job="long") or 0.0

    before = wait_for(lambda: (t := exporter.scrape()) and gpu(t) > 2 and t, timeout=20,
                      what="2 GPU-seconds")
    assert exporter.scrape() == exporter.scrape() or gpu(exporter.scrape()) >= gpu(before)
    os.kill(exporter.process.pid, signal.SIGKILL)
    exporter.process.popen.wait()  # type: ignore[union-attr]
    killed_at = time.monotonic()
    persisted = json.loads((tmp_path / "state.json").read_text())
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600  # users' usage: root's
    exporter.restart()
    after = exporter.scrape()
    assert gpu(after) >= gpu(before)
    created = "gpuacct_job_gpu_seconds_created"
    assert value_for(after, created, job="long") == value_for(before, created, job="long")
    cpu_before = value_for(before, "gpuacct_job_cpu_seconds_total", job="long") or 0
    assert (value_for(after, "gpuacct_job_cpu_seconds_total", job="long") or 0) >= cpu_before
    # At most one interval was lost: what was persisted is within one interval of the kill.
    assert persisted["last_sample"] > time.time() - (time.monotonic() - killed_at) - 2 * interval
    later = wait_for(lambda: (t := exporter.scrape()) and gpu(t) > gpu(after) + 1 and t,
                     timeout=10, what="the counter to go on growing")
    assert gpu(later) > gpu(after)


def test_finished_job_stays_for_its_retention_then_goes(
        start_exporter: Callable[..., Exporter], processes: Processes, test_users: Users,
        tmp_path: Path) -> None:
    retention = 3.0
    gpus = FakeGpus([device(0)], path=tmp_path / "gpus.json")
    job = processes.python(test_users["bob"], "idle.py", env={"GPUACCT_JOB": "short"})
    wait_until_exec(job, "idle.py")
    gpus.put(0, job.pid)
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.2, "retention_seconds": retention,
        "state_file": str(tmp_path / "state.json"),
        "nvml": {"backend": "fake", "fake_file": str(gpus.path)}}})
    wait_for(lambda: "short" in exporter.scrape(), timeout=10, what="the job")
    job.kill()
    job.wait()
    gpus.remove(job.pid)
    ended = time.monotonic()
    time.sleep(retention / 2)
    text = exporter.scrape()
    assert value_for(text, "gpuacct_job_gpu_seconds_total", job="short") is not None
    assert value_for(text, "gpuacct_job_cpu_seconds_total", job="short") is not None
    assert value_for(text, "gpuacct_job_processes", job="short") is None  # nothing live
    wait_for(lambda: "short" not in exporter.scrape(), timeout=retention + 5, what="expiry")
    # Retention runs from the last sample that saw the job alive, at most one interval early.
    assert time.monotonic() - ended >= retention - 0.2


def test_prometheus_reads_each_users_gpu_seconds_and_two_scrapers_double_nothing(
        start_exporter: Callable[..., Exporter], start_prometheus: Callable[..., Server],
        processes: Processes, test_users: Users, tmp_path: Path) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    gpus = FakeGpus([device(0), device(1, name=RTX3090)], path=tmp_path / "gpus.json")
    a = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "a"})
    b = processes.python(bob, "idle.py", env={"GPUACCT_JOB": "b"})
    for gpu, proc in ((0, a), (1, b)):
        wait_until_exec(proc, "idle.py")
        gpus.put(gpu, proc.pid)
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.5, "state_file": str(tmp_path / "state.json"),
        "nvml": {"backend": "fake", "fake_file": str(gpus.path)}}})
    scrape = [{"job_name": "gpuacct-exporter",
               "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}]
    replicas = [start_prometheus(scrape, interval="500ms") for _ in range(2)]
    time.sleep(4)
    gpus.remove(a.pid)
    gpus.remove(b.pid)
    time.sleep(1.5)  # the counters stop; let both replicas scrape the final values
    truth = exporter.scrape()
    query = "sum by (user) (gpuacct_job_gpu_seconds_total)"
    for prom in replicas:
        def both_users(p: Server = prom) -> list[dict[str, Any]]:
            found = promql(p.url, query)
            return found if len(found) == 2 else []

        result = wait_for(both_users, timeout=10, what="both users in PromQL")
        by_user = {r["metric"]["user"]: float(r["value"][1]) for r in result}
        assert by_user == pytest.approx({
            alice.name: value_for(truth, "gpuacct_job_gpu_seconds_total", user=alice.name),
            bob.name: value_for(truth, "gpuacct_job_gpu_seconds_total", user=bob.name)})
        assert by_user[alice.name] > 2


def test_demo_mode_shows_labelled_simulated_gpus(
        start_exporter: Callable[..., Exporter], processes: Processes, test_users: Users,
        tmp_path: Path) -> None:
    carol, dave = test_users["carol"], test_users["dave"]
    job = processes.python(carol, "idle.py", env={"GPUACCT_DEMO_GPU": "1", "GPUACCT_JOB": "demo"})
    # dave is no demo user: his variable puts nothing on a simulated GPU.
    outsider = processes.python(dave, "idle.py", env={"GPUACCT_DEMO_GPU": "0",
                                                      "GPUACCT_JOB": "outside"})
    wait_until_exec(job, "idle.py")
    wait_until_exec(outsider, "idle.py")
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.2, "state_file": str(tmp_path / "state.json"),
        "nvml": {"backend": "demo", "demo_users": [carol.name]}}})
    text = wait_for(lambda: (t := exporter.scrape())
                    and (value_for(t, "gpuacct_job_gpu_seconds_total", job="demo") or 0) > 0
                    and t, timeout=10, what="demo GPU seconds")
    models = {dict(labels)["gpu_model"] for labels in values(text, "gpuacct_gpu_info")}
    assert models == {"Simulated NVIDIA A100-SXM4-80GB (gpuacct demo)",
                      "Simulated NVIDIA GeForce RTX 3090 (gpuacct demo)"}
    assert value_for(text, "gpuacct_job_gpu_seconds_total", user=carol.name, job="demo",
                     gpu="1", gpu_model="Simulated NVIDIA GeForce RTX 3090 (gpuacct demo)")
    assert "DEMO MODE" in exporter.process.log_path.read_text()
    assert not value_for(exporter.scrape(), "gpuacct_job_gpu_seconds_total", user=dave.name)


def test_missing_vendor_libraries_leave_the_exporter_running(
        start_exporter: Callable[..., Exporter], tmp_path: Path) -> None:
    """No ROCm and no Ascend driver on this node, though the config asks for both: the NVIDIA
    GPUs are still read and billed; each missing library is named once and its collector is 0."""
    gpus = FakeGpus([device(0)], path=tmp_path / "gpus.json")
    exporter = start_exporter({"exporter": {
        "interval_seconds": 0.1, "state_file": str(tmp_path / "state.json"),
        "backends": ["nvml", "amdsmi", "dcmi"],
        "nvml": {"backend": "fake", "fake_file": str(gpus.path)},
        "dcmi": {"library": "/nonexistent/libdcmi.so"}}}, env={"ROCM_PATH": "/nonexistent"})
    time.sleep(1.0)  # ten cycles
    text = exporter.scrape()
    assert {c: value_for(text, "gpuacct_exporter_collector_success", collector=c)
            for c in ("nvml", "amdsmi", "dcmi", "proc")} == {"nvml": 1, "amdsmi": 0, "dcmi": 0,
                                                             "proc": 1}
    assert value_for(text, "gpuacct_gpu_info", gpu="0", vendor="nvidia") == 1
    log = exporter.process.log_path.read_text()
    assert log.count("amdsmi: not available (the amdsmi library cannot be loaded") == 1
    assert log.count("dcmi: not available (DCMI cannot be loaded from "
                     "/nonexistent/libdcmi.so") == 1
    assert "Traceback" not in log and exporter.process.popen.poll() is None  # type: ignore[union-attr]
