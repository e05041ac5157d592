"""Idle-GPU holding: a job holding GPU memory at (almost) no utilisation long enough counts
idle seconds, exactly its billed seconds of that time; busy jobs and small holdings never do;
the counts survive a restart of the exporter."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.exporter.conftest import Node
from tests.fixtures.gpus import GIB, FakeGpus, device
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.root]
IDLE = {"min_memory_bytes": GIB, "max_utilization_ratio": 0.01, "after_seconds": 0.5}


def series(node: Node, name: str) -> dict[str, float]:
    return {s["user"]: v for s, v in node.samples(name)}


def test_idle_holding_is_counted_exactly_and_only_where_it_is(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    gpus = FakeGpus([device(0), device(1), device(2)])
    node = make_node(gpus, interval_seconds=0.1, idle=IDLE)
    # alice: 2 GiB at 0% (idle); bob: 2 GiB at 50% (busy); carol: 0.5 GiB at 0% (too little).
    for user, gpu, memory, sm in (("alice", 0, 2 * GIB, 0), ("bob", 1, 2 * GIB, 50),
                                  ("carol", 2, GIB // 2, 0)):
        proc = processes.python(test_users[user], "idle.py")
        wait_until_exec(proc, "idle.py")
        gpus.put(gpu, proc.pid, used_memory=memory, sm_util=sm)
    node.cycle()
    node.cycle(times=3, pause=0.1)
    assert series(node, "gpuacct_job_gpu_idle_seconds_total") == {}  # not long enough yet
    node.cycle(times=12, pause=0.1)
    idle = series(node, "gpuacct_job_gpu_idle_seconds_total")
    billed = series(node, "gpuacct_job_gpu_seconds_total")
    alice = test_users["alice"].name
    assert set(idle) == {alice}
    # From the streak's start: all of her billed seconds but the first cycle's part.
    assert billed[alice] - 0.15 <= idle[alice] <= billed[alice]

    # Busy again: the idle count stops, the streak is over.
    gpus.data["devices"][0]["processes"][0]["sm_util"] = 80
    node.cycle(times=8, pause=0.1)
    after = series(node, "gpuacct_job_gpu_idle_seconds_total")[alice]
    assert after == pytest.approx(idle[alice], abs=0.11)
    assert node.sampler.state.streaks == {}

    # Restarted, the counter goes on from where it was.
    again = make_node(gpus, interval_seconds=0.1, idle=IDLE)
    again.cycle()
    assert series(again, "gpuacct_job_gpu_idle_seconds_total")[alice] == pytest.approx(
        after, abs=1e-6)


def test_on_mig_the_instances_own_activity_decides(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """A MIG instance is a GPU for idle holding. NVML gives no per-process utilisation there;
    the instance's GPM activity stands in. Without GPM nothing tells, so nothing is flagged."""
    mig = [{"uuid": f"MIG-{i}", "name": "H100 MIG 3g.40gb", "processes": [],
            "sm_activity": activity} for i, activity in enumerate((0, 50))]
    gpus = FakeGpus([device(0, mig=mig, gpm=True),
                     device(1, mig=[{**mig[0], "uuid": "MIG-2"}])])  # an A100: no GPM
    node = make_node(gpus, interval_seconds=0.1, idle=IDLE)
    for user, gpu, instance in (("alice", 0, 0), ("bob", 0, 1), ("carol", 1, 0)):
        proc = processes.python(test_users[user], "idle.py")
        wait_until_exec(proc, "idle.py")
        gpus.put(gpu, proc.pid, used_memory=2 * GIB, sm_util=None, mig=instance)
    node.cycle()
    node.cycle(times=12, pause=0.1)
    idle = {s["gpu"]: v for s, v in node.samples("gpuacct_job_gpu_idle_seconds_total")}
    assert set(idle) == {"0/mig0"} and idle["0/mig0"] > 0.5
