"""Real processes of real test users, reported on fake devices by the fake NVML, AMD SMI and DCMI:
each vendor's backend attributes them the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from exporter.usage.procs import ProcessTable
from tests.exporter.conftest import Node
from tests.fixtures.gpus import A100, RTX3090, FakeGpus, device
from tests.fixtures.scenarios import gpu_job
from tests.fixtures.servers import wait_for
from tests.fixtures.users import SCRIPTS, Processes, UnixUser, find_descendant, wait_until_exec

pytestmark = pytest.mark.root
Users = dict[str, UnixUser]
EVERY_VENDOR = pytest.mark.parametrize("vendor", ["nvidia", "amd", "huawei"])
SECOND_MODEL = {"nvidia": RTX3090, "amd": "AMD Instinct MI250X", "huawei": "Ascend 310P3"}


def fake(vendor: str, *devices: dict[str, Any]) -> FakeGpus:
    return FakeGpus(list(devices) or [device(0, vendor=vendor)], vendor=vendor)


def gpu_seconds(node: Node, user: str, job: str, gpu: str = "0") -> float:
    for labels, value in node.samples("gpuacct_job_gpu_seconds_total"):
        if (labels["user"], labels["job"], labels["gpu"]) == (user, job, gpu):
            return value
    raise AssertionError(f"no gpu seconds for {user}/{job} on {gpu}: "
                         f"{node.samples('gpuacct_job_gpu_seconds_total')}")


def test_a_process_seen_before_its_exec_gets_its_job_from_the_program_it_runs(
        processes: Processes, test_users: Users) -> None:
    table = ProcessTable(1000, ["env", "session"], ["GPUACCT_JOB"])
    # A wrapper that execs the program later: until then, its own environment and command line.
    proc = processes.run(test_users["bob"], ["/bin/sh", "-c", "sleep 0.5; GPUACCT_JOB=after-exec"
                                             f" exec /usr/bin/python3 {SCRIPTS / 'idle.py'}"])
    time.sleep(0.2)
    before = {s.pid: s.identity for s in table.scan()}
    assert before[proc.pid].job.startswith("sid-")
    wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "python3")
    after = {s.pid: s.identity for s in table.scan()}
    assert (after[proc.pid].job, after[proc.pid].name) == ("after-exec", "idle.py")


@EVERY_VENDOR
def test_env_var_job_with_name_gpu_uuid_and_model(
        make_node: Callable[..., Node], processes: Processes, test_users: Users,
        vendor: str) -> None:
    alice, model = test_users["alice"], SECOND_MODEL[vendor]
    gpus = fake(vendor, device(0, vendor=vendor), device(1, name=model, vendor=vendor))
    node = make_node(gpus)
    proc = processes.python(alice, "idle.py", env={"SLURM_JOB_ID": "4711", "GPUACCT_JOB": "x"})
    wait_until_exec(proc, "idle.py")
    gpus.put(1, proc.pid, used_memory=3 << 30, sm_util=70)
    node.cycle(2, pause=0.2)
    uuid = device(1, vendor=vendor)["uuid"]
    labels = {"user": alice.name, "job": "4711", "gpu": "1", "gpu_uuid": uuid,
              "gpu_model": model}
    assert node.value("gpuacct_job_gpu_seconds_total", **labels) == pytest.approx(0.2, abs=0.1)
    assert node.matching("gpuacct_job_info", user=alice.name, job="4711", name="idle.py",
                         source="env", script=str(SCRIPTS / "idle.py"), args="",
                         framework="") == 1
    process_labels = {"gpu": "1", "gpu_uuid": uuid, "pid": str(proc.pid),
                      "user": alice.name, "job": "4711"}
    assert node.value("gpuacct_gpu_process_memory_bytes", **process_labels) == 3 << 30
    # NVML gives SM utilisation, AMD SMI the compute units a process occupies, DCMI nothing.
    sm = {"nvidia": 0.7, "amd": round(0.7 * 304) / 304, "huawei": None}[vendor]
    assert node.value("gpuacct_gpu_process_sm_utilization_ratio", **process_labels) == sm
    assert node.value("gpuacct_gpu_info", gpu="1", gpu_uuid=uuid, gpu_model=model,
                      vendor=vendor, driver_version=node.value_label(
                          "gpuacct_gpu_info", "driver_version"), parent_uuid="") == 1
    assert node.value("gpuacct_job_processes", user=alice.name, job="4711") == 1
    assert node.present("gpuacct_job_memory_bytes", user=alice.name, job="4711") > 1 << 20


@pytest.fixture
def container_cgroup() -> Iterator[tuple[Path, str]]:
    """A cgroup named like one of docker's, in a real hierarchy (v1 pids, else v2)."""
    container = "c0ffee" + "1234567890" * 5 + "abcdef01"
    root = next(p for p in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
                if (p / "cgroup.procs").exists())
    group = root / "docker" / container
    ours = not group.parent.exists()  # a Docker engine (the container tests') may share it
    group.mkdir(parents=True)
    yield group, f"docker-{container[:12]}"
    for pid in (group / "cgroup.procs").read_text().split():
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2)
    group.rmdir()
    if ours:
        with contextlib.suppress(OSError):  # an engine started meanwhile has its groups there
            (root / "docker").rmdir()


def test_container_job_from_cgroup(make_node: Callable[..., Node], processes: Processes,
                                   test_users: Users, container_cgroup: tuple[Path, str]) -> None:
    group, job = container_cgroup
    bob = test_users["bob"]
    gpus = FakeGpus([device(0)])
    node = make_node(gpus)
    # Paused before exec (as a runtime does), moved into the container's cgroup, then run.
    proc = processes.run(bob, ["/bin/sh", "-c", f"kill -STOP $$; exec /usr/bin/python3 "
                                                 f"{SCRIPTS / 'idle.py'}"])
    psutil.Process(proc.pid).status()
    time.sleep(0.2)
    (group / "cgroup.procs").write_text(str(proc.pid))
    os.kill(proc.pid, signal.SIGCONT)
    wait_until_exec(proc, "idle.py")
    gpus.put(0, proc.pid)
    node.cycle(2, pause=0.2)
    assert gpu_seconds(node, bob.name, job) > 0
    assert node.matching("gpuacct_job_info", user=bob.name, job=job, name="idle.py",
                         source="container") == 1


@EVERY_VENDOR
def test_session_fallback_when_no_job_is_named(
        make_node: Callable[..., Node], processes: Processes, test_users: Users,
        vendor: str) -> None:
    carol = test_users["carol"]
    gpus = fake(vendor)
    node = make_node(gpus)
    shell = processes.run(carol, ["/bin/sh", "-c", f"/usr/bin/python3 {SCRIPTS / 'idle.py'}"])
    worker = find_descendant(shell.pid, "idle.py")
    gpus.put(0, worker.pid)
    node.cycle(2, pause=0.2)
    job = f"sid-{shell.pid}"  # the session leader's pid
    assert gpu_seconds(node, carol.name, job) > 0
    # The job is named after its program, not the shell that started it.
    assert node.matching("gpuacct_job_info", user=carol.name, job=job, name="idle.py",
                         source="session") == 1
    assert node.value("gpuacct_job_processes", user=carol.name, job=job) == 2


@EVERY_VENDOR
def test_process_of_an_unknown_uid(make_node: Callable[..., Node], processes: Processes,
                                   vendor: str) -> None:
    gpus = fake(vendor)
    node = make_node(gpus)
    gpu_job(processes, gpus, 54321, "ghost")
    node.cycle(2, pause=0.2)
    assert gpu_seconds(node, "uid_54321", "ghost") > 0


@EVERY_VENDOR
def test_two_jobs_share_one_gpu_half_each(
        make_node: Callable[..., Node], processes: Processes, test_users: Users,
        vendor: str) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    gpus = fake(vendor)
    node = make_node(gpus)
    gpu_job(processes, gpus, alice, "a")
    gpu_job(processes, gpus, alice, "a")  # a second process of the same job: counted once
    gpu_job(processes, gpus, bob, "b")
    node.cycle()
    started = time.monotonic()
    node.cycle(3, pause=0.3)
    elapsed = node.last_cycle() - started
    assert elapsed > 0
    total = time.monotonic() - started
    ga, gb = gpu_seconds(node, alice.name, "a"), gpu_seconds(node, bob.name, "b")
    assert ga == pytest.approx(gb)
    assert ga + gb == pytest.approx(total, abs=0.05)


@EVERY_VENDOR
@pytest.mark.parametrize("policy, expected_a", [("full", 1.0), ("memory", 0.75)])
def test_sharing_policies(make_node: Callable[..., Node], processes: Processes,
                          test_users: Users, policy: str, expected_a: float,
                          vendor: str) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    gpus = fake(vendor)
    node = make_node(gpus, gpu_share=policy)
    gpu_job(processes, gpus, alice, "a", used_memory=3 << 30)
    gpu_job(processes, gpus, bob, "b", used_memory=1 << 30)
    node.cycle()
    t0 = node.last_cycle()
    node.cycle(2, pause=0.3)
    elapsed = node.last_cycle() - t0
    assert gpu_seconds(node, alice.name, "a") == pytest.approx(expected_a * elapsed)
    b_share = 1.0 if policy == "full" else 0.25
    assert gpu_seconds(node, bob.name, "b") == pytest.approx(b_share * elapsed)


@EVERY_VENDOR
def test_pid_gone_between_nvml_and_proc(
        make_node: Callable[..., Node], processes: Processes, test_users: Users,
        vendor: str) -> None:
    alice = test_users["alice"]
    gpus = fake(vendor)
    node = make_node(gpus)
    a = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "a"})
    gone = processes.python(test_users["bob"], "idle.py")
    wait_until_exec(a, "idle.py")
    gone.kill()
    gone.wait()  # reaped: NVML still lists it, /proc no longer has it
    gpus.put(0, a.pid)
    gpus.put(0, gone.pid)
    node.cycle()
    t0 = node.last_cycle()
    node.cycle(pause=0.3)
    elapsed = node.last_cycle() - t0
    assert gpu_seconds(node, alice.name, "a") == pytest.approx(elapsed)  # not shared with a ghost
    assert all(labels["user"] == alice.name
               for labels, _ in node.samples("gpuacct_job_gpu_seconds_total"))


@EVERY_VENDOR
def test_unbilled_process_still_takes_its_share(
        make_node: Callable[..., Node], processes: Processes, test_users: Users,
        vendor: str) -> None:
    alice = test_users["alice"]
    gpus = fake(vendor)
    node = make_node(gpus)
    a = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "a"})
    root_job = processes.python(0, "idle.py")
    for p in (a, root_job):
        wait_until_exec(p, "idle.py")
        gpus.put(0, p.pid)
    node.cycle()
    t0 = node.last_cycle()
    node.cycle(pause=0.3)
    elapsed = node.last_cycle() - t0
    assert gpu_seconds(node, alice.name, "a") == pytest.approx(elapsed / 2)
    assert {labels["user"] for labels, _ in node.samples("gpuacct_job_gpu_seconds_total")} == {
        alice.name}


@EVERY_VENDOR
def test_one_gpu_lost(make_node: Callable[..., Node], processes: Processes,
                      test_users: Users, vendor: str) -> None:
    alice = test_users["alice"]
    gpus = fake(vendor, device(0, vendor=vendor), device(1, vendor=vendor))
    node = make_node(gpus)
    gpu_job(processes, gpus, alice, "a", gpu=1)
    gpus.set(0, lost=True)
    node.cycle(2, pause=0.2)
    assert node.value("gpuacct_gpu_up", gpu="0", gpu_uuid="") == 0
    assert node.value("gpuacct_gpu_up", gpu="1", gpu_uuid=device(1, vendor=vendor)["uuid"]) == 1
    # The reading is incomplete (nobody on the lost device can be billed): the collector says so.
    assert node.value("gpuacct_exporter_collector_success", collector=gpus.backend_name) == 0
    assert gpu_seconds(node, alice.name, "a", gpu="1") > 0
    assert node.value("gpuacct_gpu_temperature_celsius", gpu="0", gpu_uuid="") is None
    gpus.set(0, lost=False)
    node.cycle()
    assert node.value("gpuacct_exporter_collector_success", collector=gpus.backend_name) == 1


def test_mig_device(make_node: Callable[..., Node], processes: Processes,
                    test_users: Users) -> None:
    alice = test_users["alice"]
    mig = [{"uuid": "MIG-1111", "name": f"{A100} MIG 1g.10gb", "processes": []}]
    gpus = FakeGpus([device(0, mig=mig)])
    node = make_node(gpus)
    gpu_job(processes, gpus, alice, "a", mig=0)
    node.cycle(2, pause=0.2)
    assert node.present("gpuacct_job_gpu_seconds_total", user=alice.name, job="a", gpu="0/mig0",
                      gpu_uuid="MIG-1111", gpu_model=f"{A100} MIG 1g.10gb") > 0
    assert node.value("gpuacct_gpu_info", gpu="0/mig0", gpu_uuid="MIG-1111",
                      gpu_model=f"{A100} MIG 1g.10gb", vendor="nvidia", driver_version="550.54.15",
                      parent_uuid=device(0)["uuid"]) == 1


def test_process_in_a_pid_namespace(make_node: Callable[..., Node], processes: Processes,
                                    test_users: Users) -> None:
    alice = test_users["alice"]
    gpus = FakeGpus([device(0)])
    node = make_node(gpus)
    outer = processes.run(0, [
        "unshare", "--pid", "--fork", "--mount-proc", "setpriv", f"--reuid={alice.uid}",
        f"--regid={alice.gid}", "--clear-groups", "/usr/bin/python3", str(SCRIPTS / "idle.py")],
        env={"GPUACCT_JOB": "ns"})
    inner = find_descendant(outer.pid, "idle.py")
    nspid = Path(f"/proc/{inner.pid}/status").read_text().split("NSpid:")[1].split("\n")[0]
    assert nspid.split() == [str(inner.pid), "1"]  # pid 1 inside its own namespace
    gpus.put(0, inner.pid)  # NVML reports host pids
    node.cycle(2, pause=0.2)
    assert gpu_seconds(node, alice.name, "ns") > 0


@EVERY_VENDOR
def test_processes_below_min_uid_are_not_billed(make_node: Callable[..., Node],
                                                processes: Processes, vendor: str) -> None:
    gpus = fake(vendor)
    node = make_node(gpus)
    gpu_job(processes, gpus, 999, "sys")
    node.cycle(2, pause=0.2)
    assert node.samples("gpuacct_job_gpu_seconds_total") == []
    assert not any(labels["job"] == "sys" for labels, _ in node.samples("gpuacct_job_info"))
