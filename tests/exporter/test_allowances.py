"""The node holds each user to their GPU allowance at the moment a GPU process appears: pure
decisions of the planner, tested without root, servers or processes."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.devices.base import GpuUnit
from exporter.enforce.plan import (
    ALLOWANCE,
    Stop,
    WriteHook,
    blocking,
    held,
    plan_cycle,
    plan_policy,
)
from exporter.enforce.state import ActuatorState
from exporter.usage.accounting import GpuHolder
from exporter.usage.sampler import Snapshot
from gpuacct.policy import Allowance, Allowances, Held, NodePolicy, Reason, UserPolicy
from tests.exporter.test_plan import KILL, NOW, node, proc

GIB = 1 << 30
LIMIT = Reason(alert="GpuacctGpuLimitReached", action="block", allowance="gpus")
BALANCE = Reason(alert="GpuacctBalanceLimitedBlockGpu", action="block")


def on(gpus: dict[int, tuple[str, int]], *others: int) -> Snapshot:
    """ann's (uid 1000) processes `pid -> (GPU, memory)` and others' (ben) idle ones."""
    procs = [proc(pid, 1000) for pid in gpus] + [proc(pid, 1001) for pid in others]
    holders = tuple(GpuHolder(GpuUnit(gpu, f"GPU-{gpu}", "A100"), pid, "ann", "j", memory, None)
                    for pid, (gpu, memory) in gpus.items())
    return Snapshot(procs=tuple(procs), holders=holders)


def state(allowance: Allowance, held_elsewhere: Held | None = None) -> ActuatorState:
    """A node past its first cycle (nothing ran then), with ann's allowance."""
    return ActuatorState(admitted={}, allowances=Allowances(
        users={"ann": allowance},
        held={"ann": {"gpu02": held_elsewhere}} if held_elsewhere else {}))


def stopped(steps: Sequence[object]) -> list[int]:
    return [p.pid for s in steps if isinstance(s, Stop) for p in s.targets]


def test_a_second_gpu_past_the_allowance_is_stopped_at_once_a_shared_one_is_not() -> None:
    s = state(Allowance(gpus=1))
    first = plan_cycle(s, on({10: ("0", GIB)}), node())
    assert stopped(first.steps) == [] and first.state.admitted == {"ann": [(10, 100)]}
    second = plan_cycle(first.state, on({10: ("0", GIB), 20: ("1", GIB), 30: ("0", GIB)}),
                        node(now=NOW + 0.25))
    [stop] = [s for s in second.steps if isinstance(s, Stop)]
    assert (stop.alert, [p.pid for p in stop.targets]) == (ALLOWANCE, [20])
    assert stop.why == "it would be on 2 GPUs at once; you may use 1"
    assert second.state.admitted == {"ann": [(10, 100), (30, 300)]}  # GPU 0 is hers already


def test_when_the_first_process_ends_the_next_one_starts_at_once() -> None:
    s = plan_cycle(state(Allowance(gpus=1)), on({10: ("0", GIB)}), node()).state
    after = plan_cycle(s, on({40: ("1", GIB)}), node(now=NOW + 3))  # 10 ended
    assert stopped(after.steps) == [] and after.state.admitted == {"ann": [(40, 400)]}


def test_two_new_processes_at_once_the_earlier_started_is_let_in() -> None:
    both = plan_cycle(state(Allowance(gpus=1)), on({60: ("1", GIB), 50: ("0", GIB)}), node())
    assert stopped(both.steps) == [60] and both.state.admitted == {"ann": [(50, 500)]}


def test_what_the_user_holds_on_other_nodes_counts() -> None:
    s = state(Allowance(gpus=2), held_elsewhere=Held(gpus=2, gpu_memory_bytes=GIB))
    plan = plan_cycle(s, on({10: ("0", GIB)}), node())
    assert stopped(plan.steps) == [10]
    assert s.allowances.elsewhere("ann", "gpu01") == Held(gpus=2, gpu_memory_bytes=GIB)
    assert s.allowances.elsewhere("ann", "gpu02") == Held()  # a node's own holding is its own


def test_gpu_memory_past_the_allowance_is_stopped() -> None:
    s = plan_cycle(state(Allowance(gpu_memory_bytes=10 * GIB)), on({10: ("0", 6 * GIB)}),
                   node()).state
    plan = plan_cycle(s, on({10: ("0", 6 * GIB), 20: ("1", 5 * GIB)}), node(now=NOW + 1))
    [stop] = [s for s in plan.steps if isinstance(s, Stop)]
    assert stop.why == "it would hold 11 GiB of GPU memory at once; you may hold 10 GiB"


def test_without_an_allowance_every_process_is_let_in_and_protected_users_always() -> None:
    plan = plan_cycle(ActuatorState(), on({10: ("0", GIB), 20: ("1", GIB)}), node())
    assert stopped(plan.steps) == []
    ann_protected = plan_cycle(state(Allowance(gpus=0)), on({10: ("0", GIB)}),
                               node(protected=frozenset({"ann"})))
    assert stopped(ann_protected.steps) == []


def test_a_dry_run_reports_once() -> None:
    first = plan_cycle(state(Allowance(gpus=0)), on({10: ("0", GIB)}), node(dry_run=True))
    assert stopped(first.steps) == [10]
    again = plan_cycle(first.state, on({10: ("0", GIB)}), node(now=NOW + 1, dry_run=True))
    assert stopped(again.steps) == []


def test_a_limit_alert_is_left_to_the_allowance_other_blocks_are_not() -> None:
    gpus = Allowance(gpus=1)
    limit = UserPolicy(block=True, reasons=(LIMIT,))
    assert not blocking(limit, gpus)
    assert blocking(limit, Allowance())  # the node does not know ann's allowance: it blocks
    assert blocking(limit, Allowance(gpu_memory_bytes=GIB))  # nor this allowance
    assert blocking(UserPolicy(block=True, reasons=(LIMIT, BALANCE)), gpus)
    assert blocking(UserPolicy(block=True, kill=True, reasons=(LIMIT, KILL)), gpus)
    assert blocking(UserPolicy(block=True), gpus)
    # The limit is told to ann and recorded, and her hook file does not say she is blocked.
    plan = plan_policy(state(gpus), NodePolicy(version=1, users={"ann": limit}),
                       on({10: ("0", GIB)}), node())
    assert plan is not None and plan.state.users["ann"].block_since is None
    [hook] = [s for s in plan.steps if isinstance(s, WriteHook)]
    assert hook.policy.block is False and hook.policy.reasons == (LIMIT,)


def test_what_each_user_holds_is_counted_for_the_enforcer() -> None:
    assert held(on({10: ("0", GIB), 20: ("0", GIB), 30: ("1/mig2", 2 * GIB)})) == {
        "ann": Held(gpus=2, gpu_memory_bytes=4 * GIB)}


def test_what_runs_at_the_first_cycle_is_let_in_whatever_the_allowance() -> None:
    """An upgrade (or a first start) never stops work that was running before it."""
    first = ActuatorState(allowances=Allowances(users={"ann": Allowance(gpus=1)}))
    assert first.admitted is None
    running = plan_cycle(first, on({10: ("0", GIB), 20: ("1", GIB)}), node())
    assert stopped(running.steps) == [] and running.state.admitted == {
        "ann": [(10, 100), (20, 200)]}
    more = plan_cycle(running.state, on({10: ("0", GIB), 20: ("1", GIB), 30: ("2", GIB)}),
                      node(now=NOW + 1))
    assert stopped(more.steps) == [30]  # over the allowance from then on
