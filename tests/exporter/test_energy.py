"""Energy per job: each GPU's energy (its own counter, else its power over time) shared among the
jobs on it by their SM activity, counted as gpuacct_job_gpu_energy_joules_total."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.devices.base import GpuDevice, GpuUnit
from exporter.usage.accounting import GpuHolder, account_energy
from exporter.usage.counters import UsageState
from tests.exporter.conftest import Node
from tests.fixtures.gpus import FakeGpus, device
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

UNIT = GpuUnit("0", "GPU-0", "A100")


def gpu(energy: float | None = None, power: float | None = 300.0) -> GpuDevice:
    return GpuDevice(0, "GPU-0", "A100", energy_joules_total=energy, power_watts=power,
                     units=(UNIT,))


def holder(user: str, job: str, sm: float | None) -> GpuHolder:
    return GpuHolder(UNIT, hash(job) % 10_000, user, job, 1 << 30, sm)


def shares(state: UsageState) -> dict[str, float]:
    return {key[1]: round(c.value, 6) for key, c in state.energy.items()}


def test_a_gpus_counter_growth_is_shared_by_sm_activity() -> None:
    state, counters = UsageState(), dict[str, float]()
    holders = [holder("ann", "a", 0.6), holder("bob", "b", 0.2), holder("", "pid-9", 0.2)]
    account_energy(state, [gpu(energy=1000.0)], holders, {}, 0.0, 1.0, counters)
    assert state.energy == {}  # the first cycle: nothing to compare with, and no time
    account_energy(state, [gpu(energy=1500.0)], holders, {}, 5.0, 2.0, counters)
    # 500 J: 60% ann, 20% bob, and the unbilled process's 20% billed to nobody.
    assert shares(state) == {"a": 300.0, "b": 100.0}


def test_without_a_counter_power_over_time_shared_equally_where_activity_is_unknown() -> None:
    state, counters = UsageState(), dict[str, float]()
    account_energy(state, [gpu(power=200.0)], [holder("ann", "a", None), holder("bob", "b", 0.9)],
                   {}, 10.0, 1.0, counters)
    assert shares(state) == {"a": 1000.0, "b": 1000.0}


def test_a_counter_that_began_again_falls_back_to_power_and_reserved_gpus_go_whole() -> None:
    state, counters = UsageState(), {"GPU-0": 9_000.0}
    account_energy(state, [gpu(energy=50.0, power=100.0)], [holder("ann", "a", 0.5)],
                   {0: ("bob", 7)}, 2.0, 1.0, counters)
    assert shares(state) == {"reservation-7": 200.0}  # the driver reloaded: 100 W x 2 s
    assert counters == {"GPU-0": 50.0}


@pytest.mark.root
def test_a_jobs_energy_is_what_its_gpu_drew_while_it_ran(
        make_node: Callable[..., Node], processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """Through the fake NVML's energy counter (its power summed over time): a job alone on a
    GPU drawing 60 W is counted 60 J for each of its GPU seconds."""
    alice = test_users["alice"]
    gpus = FakeGpus([device(0)])
    node = make_node(gpus)
    proc = processes.python(alice, "idle.py")
    wait_until_exec(proc, "idle.py")
    gpus.put(0, proc.pid)
    node.cycle(8, pause=0.25)
    labels = {"user": alice.name, "gpu": "0", "gpu_uuid": device(0)["uuid"],
              "gpu_model": device(0)["name"]}
    job = next(found["job"] for found, _ in node.samples("gpuacct_job_gpu_seconds_total")
               if found["user"] == alice.name)
    seconds = node.present("gpuacct_job_gpu_seconds_total", job=job, **labels)
    joules = node.present("gpuacct_job_gpu_energy_joules_total", job=job, **labels)
    assert seconds > 1.0
    assert joules == pytest.approx(60.0 * seconds, rel=0.1)
