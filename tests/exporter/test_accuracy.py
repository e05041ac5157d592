"""Accuracy over a minute of jobs starting and stopping on a node with an NVIDIA GPU, an AMD GPU
and an Ascend NPU (each vendor's backend over its fake library), with real busy processes.

Known truth: GPU occupancy is the time between the test putting a pid on a fake GPU and
taking it off (split 1/k among jobs sharing one); CPU is what each busy process says its own
rusage was when it finished.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from tests.exporter.conftest import Node
from tests.fixtures.gpus import RTX3090, FakeGpus, device
from tests.fixtures.users import SCRIPTS, Processes, UnixUser, find_descendant

pytestmark = [pytest.mark.root, pytest.mark.slow]

# job, user, device (0 NVIDIA, 1 AMD, 2 Ascend), start, stop (seconds from the beginning)
SCHEDULE = [
    ("a", "alice", 0, 0.0, 62.0),   # alone on the NVIDIA GPU, then shares it with b
    ("b", "bob", 0, 10.0, 40.0),    # shares it with a
    ("c", "alice", 1, 20.0, 50.0),  # alone on the AMD GPU
    ("d", "carol", 1, 30.0, 45.0),  # shares it with c
    ("e", "bob", 2, 5.0, 55.0),     # alone on the NPU
    ("f", "carol", 2, 15.0, 35.0),  # shares it with e
]


def busy_job(processes: Processes, user: UnixUser, job: str, seconds: float,
             out: Path) -> tuple[Popen[bytes], int]:
    """A user's shell running a busy program for `seconds` and reaping it (as a login shell
    would); returns the shell and the program's pid."""
    shell = processes.run(user, ["/bin/sh", "-c",
                                 f"/usr/bin/python3 {SCRIPTS / 'train.py'} {seconds} {out}; "
                                 "exec sleep 3600"], env={"GPUACCT_JOB": job})
    return shell, find_descendant(shell.pid, "train.py").pid


def test_gpu_and_cpu_seconds_match_the_truth(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    out_dir = Path(tempfile.mkdtemp(prefix="rusage-", dir=SCRIPTS))  # the users must write here
    out_dir.chmod(0o777)
    fakes = [FakeGpus([device(0, name=RTX3090)]), FakeGpus([device(0, vendor="amd")], vendor="amd"),
             FakeGpus([device(0, vendor="huawei")], vendor="huawei")]
    node = make_node(fakes, interval_seconds=0.25)
    stop = threading.Event()
    sampler = threading.Thread(target=node.sampler.run, args=(stop,))
    node.cycle()
    sampler.start()

    t0 = time.monotonic()
    events = sorted([(start, "start", j) for j in SCHEDULE for start in [j[3]]] +
                    [(j[4], "stop", j) for j in SCHEDULE])
    on_gpu: dict[int, set[str]] = defaultdict(set)
    truth: dict[str, float] = defaultdict(float)
    last = 0.0
    pids: dict[str, int] = {}
    try:
        for at, kind, (job, user, gpu, start, stop_at) in events:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if kind == "start":
                _, pids[job] = busy_job(processes, test_users[user], job, stop_at - start,
                                        out_dir / job)
            else:
                # The program ends by itself at its stop time; NVML stops listing it.
                while not (out_dir / job).exists() and time.monotonic() - t0 < stop_at + 5:
                    time.sleep(0.01)
            # The truth changes when the fake GPU does, not when the event was due: starting
            # a user's shell can take a second on a busy 2-core machine.
            now = time.monotonic() - t0
            for jobs in on_gpu.values():  # occupancy since the last change, split 1/k
                for j in jobs:
                    truth[j] += (now - last) / len(jobs)
            last = now
            if kind == "start":
                fakes[gpu].put(0, pids[job])
                on_gpu[gpu].add(job)
            else:
                fakes[gpu].remove(pids[job])
                on_gpu[gpu].discard(job)
        time.sleep(1.0)  # a few more cycles, so the shells' reaping is seen
    finally:
        stop.set()
        sampler.join()

    assert time.monotonic() - t0 >= 60
    print()
    for job, user, gpu, *_ in SCHEDULE:
        name = test_users[user].name
        measured_gpu = sum(v for labels, v in node.samples("gpuacct_job_gpu_seconds_total")
                           if labels["job"] == job and labels["gpu"] == str(gpu))
        measured_cpu = node.value("gpuacct_job_cpu_seconds_total", user=name, job=job)
        rusage = float((out_dir / job).read_text())
        print(f"job {job}: GPU {measured_gpu:.3f}s vs {truth[job]:.3f}s known; "
              f"CPU {measured_cpu:.3f}s vs {rusage:.3f}s rusage")
        assert measured_gpu == pytest.approx(truth[job], rel=0.01)
        assert measured_cpu == pytest.approx(rusage, rel=0.02)
