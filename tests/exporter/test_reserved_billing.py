"""A reserved GPU is billed once, to its holder, used or idle: the holder's own processes on it
add nothing, and nobody else's (being stopped for using it) is billed for it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.exporter.conftest import Node
from tests.fixtures.gpus import FakeGpus, device
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.root]


def gpu_seconds(node: Node) -> dict[tuple[str, str, str], float]:
    return {(s["user"], s["job"], s["gpu"]): v
            for s, v in node.samples("gpuacct_job_gpu_seconds_total")}


def test_the_holder_pays_the_reserved_gpu_whole_and_nobody_else_does(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    gpus = FakeGpus([device(0), device(1), device(2)])
    node = make_node(gpus, interval_seconds=0.1)
    # GPU 0 reserved by alice (used by her and by bob), GPU 2 reserved by alice (idle),
    # GPU 1 not reserved (bob).
    node.sampler.reserved = lambda: {0: (alice.name, 7), 2: (alice.name, 8)}
    procs = {}
    for user, gpu in ((alice, 0), (bob, 0), (bob, 1)):
        proc = processes.python(user, "idle.py", env={"GPUACCT_JOB": f"{user.name}-{gpu}"})
        wait_until_exec(proc, "idle.py")
        gpus.put(gpu, proc.pid)
        procs[(user.name, gpu)] = proc
    node.cycle()
    start = time.monotonic()
    node.cycle(times=10, pause=0.1)
    elapsed = time.monotonic() - start
    billed = gpu_seconds(node)

    assert billed[(alice.name, "reservation-7", "0")] == pytest.approx(elapsed, abs=0.1)
    assert billed[(alice.name, "reservation-8", "2")] == pytest.approx(elapsed, abs=0.1)
    assert billed[(bob.name, f"{bob.name}-1", "1")] == pytest.approx(elapsed, abs=0.1)
    # On reserved GPUs, only the reservation is billed: one user, once.
    assert {k for k in billed if k[2] in ("0", "2")} == {
        (alice.name, "reservation-7", "0"), (alice.name, "reservation-8", "2")}
    info = {(s["user"], s["job"]): s["name"] for s, _ in node.samples("gpuacct_job_info")}
    assert info[(alice.name, "reservation-7")] == "reservation"


def test_reserved_gpus_the_holder_does_not_keep_busy_count_as_idle_held(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """Reserved but unused (no process), or used at 0%, or kept busy only by somebody else:
    idle-held, whatever memory is held; kept busy by the holder: not."""
    alice, bob = test_users["alice"], test_users["bob"]
    gpus = FakeGpus([device(0), device(1), device(2), device(3)])
    node = make_node(gpus, interval_seconds=0.1, idle={"after_seconds": 0.3})
    node.sampler.reserved = lambda: {i: (alice.name, 10 + i) for i in range(4)}
    for user, gpu, sm in ((alice, 1, 0), (bob, 2, 90), (alice, 3, 60)):
        proc = processes.python(user, "idle.py")
        wait_until_exec(proc, "idle.py")
        gpus.put(gpu, proc.pid, used_memory=1 << 20, sm_util=sm)  # 1 MiB: little memory
    node.cycle()
    node.cycle(times=12, pause=0.1)
    idle = {(s["job"], s["gpu"]): v for s, v in node.samples("gpuacct_job_gpu_idle_seconds_total")}
    billed = gpu_seconds(node)
    assert set(idle) == {("reservation-10", "0"), ("reservation-11", "1"),
                         ("reservation-12", "2")}
    for (job, unit), seconds in idle.items():
        # From the streak's start (the first cycle's part is not seen), never more than billed.
        assert billed[(alice.name, job, unit)] - 0.15 <= seconds <= billed[(alice.name, job, unit)]
