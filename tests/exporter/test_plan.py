"""The actuator's planner: pure decisions, tested without root, servers or processes. The
last test runs every other one again as `nobody` to show that none needs a privilege."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.devices.base import GpuUnit
from exporter.enforce.plan import (
    IDLE,
    RESERVATION,
    Kill,
    Limit,
    Node,
    Notify,
    Plan,
    Record,
    RemoveHook,
    Stop,
    WriteHook,
    plan_cycle,
    plan_grace,
    plan_policy,
)
from exporter.enforce.state import ActuatorState, Applied, Stopping
from exporter.usage.accounting import GpuHolder
from exporter.usage.procs import ProcIdentity, ProcSample
from exporter.usage.sampler import Snapshot
from gpuacct.policy import NodePolicy, Notice, Reason, Reservations, ReservedGpu, UserPolicy

NAMES = {0: "root", 999: "postgres", 1000: "ann", 1001: "ben", 1002: "cat"}
UIDS = {name: uid for uid, name in NAMES.items()}
BLOCK = Reason(alert="Limited", action="block", summary="no new GPU work")
KILL = Reason(alert="Exhausted", action="kill", summary="out of money")
THROTTLE = Reason(alert="Throttled", action="throttle", cpu_quota_percent=50)
NOW = 1_000_000.0


def refusal(protected: frozenset[str] = frozenset()) -> Callable[[int], str | None]:
    def why(uid: int) -> str | None:
        if uid < 1000:
            return f"uid {uid} is below min_uid 1000"
        return f"{NAMES[uid]} is a protected user" if NAMES.get(uid) in protected else None
    return why


def node(now: float = NOW, dry_run: bool = False, limiter: str | None = "cgroup1",
         protected: frozenset[str] = frozenset(), grace: float = 30.0,
         idle: str = "none", idle_after: float = 0.0) -> Node:
    return Node(now=now, dry_run=dry_run, kill_grace_seconds=grace, name="gpu01",
                limiter=limiter, uid_of=UIDS.get, refusal=refusal(protected),
                idle_action=idle, idle_action_after=idle_after)


def proc(pid: int, uid: int, ppid: int = 1) -> ProcSample:
    return ProcSample(pid=pid, start_ticks=pid * 10, ppid=ppid, cpu_ticks=0, child_ticks=0,
                      rss_bytes=0, identity=ProcIdentity(uid=uid, user=NAMES[uid], job="j",
                                                         job_source="env", name=f"p{pid}",
                                                         is_shell=False))


def snapshot(procs: list[ProcSample], on_gpu: tuple[int, ...] = ()) -> Snapshot:
    by_pid = {p.pid: p for p in procs}
    holders = tuple(GpuHolder(GpuUnit("0", "GPU-0", "A100"), pid, by_pid[pid].identity.user,
                              "j", None, None) for pid in on_gpu)
    return Snapshot(procs=tuple(procs), holders=holders)


def policy(version: int = 1, reservations: Reservations | None = None,
           **users: UserPolicy) -> NodePolicy:
    return NodePolicy(version=version, users=users,
                      reservations=reservations or Reservations())


def reserved(user: str | None, mode: str = "open", grace: float = 60.0,
             node_name: str = "gpu01") -> Reservations:
    """GPU 0 of `node_name` reserved for `user` for an hour (None: not reserved)."""
    gpus = (ReservedGpu(gpu=0, user=user, id=7, ends=NOW + 3600),) if user else ()
    return Reservations(mode=mode, grace_seconds=grace,
                        nodes={node_name: gpus})


def applied(plan: Plan | None, user: str) -> Applied:
    assert plan is not None
    return plan.state.users[user]


def kinds(plan: Plan | None) -> list[str]:
    assert plan is not None
    return [type(s).__name__ if not isinstance(s, Record) else f"Record:{s.action}:{s.result}"
            for s in plan.steps]


# -- one policy, one snapshot: what is decided ----------------------------------------------
ANN_TRAINS = snapshot([proc(10, 1000), proc(11, 1000, ppid=10), proc(20, 1001)], on_gpu=(10,))


def test_a_block_leaves_running_work_alone_and_notifies_once() -> None:
    plan = plan_policy(ActuatorState(), policy(ann=UserPolicy(block=True, reasons=(BLOCK,))),
                       ANN_TRAINS, node())
    assert kinds(plan) == ["Notify", "Record:block:ok", "WriteHook"]
    assert applied(plan, "ann").baseline == {(10, 100), (11, 110)}
    assert applied(plan, "ann").block_since == NOW
    assert plan is not None and isinstance(plan.steps[0], Notify)
    assert plan.steps[0].text == "no new GPU work" and plan.steps[0].uid == 1000
    again = plan_policy(plan.state, policy(2, ann=UserPolicy(block=True, reasons=(BLOCK,))),
                        ANN_TRAINS, node(now=NOW + 5))
    assert kinds(again) == ["WriteHook"]  # told already; the block stands since NOW
    assert applied(again, "ann").block_since == NOW


def test_new_gpu_work_of_a_blocked_user_is_stopped_with_its_tree() -> None:
    blocked = plan_policy(ActuatorState(), policy(ann=UserPolicy(block=True, reasons=(BLOCK,))),
                          snapshot([proc(10, 1000)]), node())
    assert blocked is not None
    later = snapshot([proc(10, 1000), proc(30, 1000), proc(31, 1000, ppid=30),
                      proc(32, 1001, ppid=30)], on_gpu=(10, 30))
    plan = plan_cycle(blocked.state, later, node(now=NOW + 5))
    [stop] = plan.steps
    assert isinstance(stop, Stop) and stop.track and stop.why == "new GPU work is blocked"
    assert sorted(p.pid for p in stop.targets) == [30, 31]  # not 10 (baseline), not ben's 32
    assert stop.deadline == NOW + 5 + 30


def test_kill_stops_every_gpu_tree_and_tracks_them_only_while_blocked() -> None:
    plan = plan_policy(ActuatorState(), policy(ann=UserPolicy(block=True, kill=True,
                                                              reasons=(KILL,))),
                       ANN_TRAINS, node())
    assert kinds(plan) == ["Notify", "Record:block:ok", "Record:kill:ok", "Stop", "WriteHook"]
    assert plan is not None
    stop = plan.steps[3]
    assert isinstance(stop, Stop) and stop.track and stop.alert == "Exhausted"
    assert sorted(p.pid for p in stop.targets) == [10, 11]
    unblocked = plan_policy(ActuatorState(), policy(ann=UserPolicy(kill=True, reasons=(KILL,))),
                            ANN_TRAINS, node())
    assert unblocked is not None
    assert [s.track for s in unblocked.steps if isinstance(s, Stop)] == [False]


def test_lifting_a_block_forgets_what_was_being_stopped() -> None:
    state = ActuatorState(version=1, users={"ann": Applied(
        uid=1000, policy=UserPolicy(block=True, reasons=(BLOCK,)), block_since=NOW)},
        stopping=[Stopping(user="ann", target=(10, 100, 1000, "p10"), deadline=NOW, alert="x"),
                  Stopping(user="ben", target=(20, 200, 1001, "p20"), deadline=NOW, alert="y")])
    plan = plan_policy(state, policy(2), ANN_TRAINS, node())
    assert kinds(plan) == ["Record:unblock:ok", "RemoveHook"]
    assert plan is not None and "ann" not in plan.state.users
    assert [s.user for s in plan.state.stopping] == ["ben"]
    assert [s.user for s in state.stopping] == ["ann", "ben"]  # the input is left as it was


@pytest.mark.parametrize("limiter, dry_run, expected", [
    ("cgroup1", False, ["Limit", "WriteHook"]),
    (None, False, ["Record:throttle:unsupported", "WriteHook"]),
    ("cgroup1", True, ["Record:throttle:dry_run", "WriteHook"]),
])
def test_a_throttle_is_planned_as_the_node_can_do_it(limiter: str | None, dry_run: bool,
                                                     expected: list[str]) -> None:
    wanted = policy(ann=UserPolicy(cpu_quota_percent=50, reasons=(THROTTLE,)))
    plan = plan_policy(ActuatorState(), wanted, ANN_TRAINS, node(limiter=limiter,
                                                                 dry_run=dry_run))
    assert kinds(plan)[1:] == expected  # after the notice
    assert applied(plan, "ann").quota == 50
    assert plan is not None
    for step in plan.steps:
        if isinstance(step, Limit):
            assert (step.quota, step.previous, step.pids) == (50, None, (10, 11))


def test_new_processes_of_a_throttled_user_join_the_quota_except_under_systemd() -> None:
    state = ActuatorState(version=1, users={"ann": Applied(
        uid=1000, policy=UserPolicy(cpu_quota_percent=50), quota=50, limited={(10, 100)})})
    grown = snapshot([proc(10, 1000), proc(12, 1000)])
    [limit] = plan_cycle(state, grown, node()).steps
    assert isinstance(limit, Limit) and limit.relimit and limit.pids == (10, 12)
    assert plan_cycle(state, grown, node(limiter="systemd")).steps == []
    assert plan_cycle(state, snapshot([proc(10, 1000)]), node()).steps == []


@pytest.mark.parametrize("user, protected", [("root", frozenset()), ("postgres", frozenset()),
                                             ("ann", frozenset({"ann"}))])
def test_root_system_and_protected_users_are_refused_whole(user: str,
                                                           protected: frozenset[str]) -> None:
    users: dict[str, UserPolicy] = {user: UserPolicy(block=True, kill=True,
                                                     cpu_quota_percent=10, reasons=(KILL,))}
    wanted = NodePolicy(version=1, users=users, reservations=Reservations())
    procs = snapshot([proc(5, UIDS[user])], on_gpu=(5,))
    plan = plan_policy(ActuatorState(), wanted, procs, node(protected=protected))
    assert kinds(plan) == ["Record:policy:refused", "RemoveHook"]


def test_an_older_or_equal_version_changes_nothing() -> None:
    state = ActuatorState(version=5)
    assert plan_policy(state, policy(5, ann=UserPolicy(block=True)), ANN_TRAINS, node()) is None
    assert plan_policy(state, policy(4), ANN_TRAINS, node()) is None


def test_an_unknown_user_is_forgotten_without_a_step() -> None:
    plan = plan_policy(ActuatorState(), policy(nobody_here=UserPolicy(block=True)), ANN_TRAINS,
                       node())
    assert plan is not None and plan.steps == [] and plan.state.users == {}


def test_sigkill_follows_once_the_grace_is_over() -> None:
    due = Stopping(user="ann", target=(10, 100, 1000, "p10"), deadline=NOW, alert="x")
    later = Stopping(user="ann", target=(11, 110, 1000, "p11"), deadline=NOW + 1, alert="x")
    plan = plan_grace(ActuatorState(stopping=[due, later]), NOW)
    assert plan.steps == [Kill(due)] and plan.state.stopping == [later]


def test_the_hook_says_what_is_in_force_and_whether_it_is_a_dry_run() -> None:
    wanted = UserPolicy(block=True, reasons=(BLOCK,))
    plan = plan_policy(ActuatorState(), policy(ann=wanted), ANN_TRAINS, node(dry_run=True))
    assert plan is not None
    assert plan.steps[-1] == WriteHook("ann", 1000, wanted, True, NOW)
    cleared = plan_policy(plan.state, policy(2), ANN_TRAINS, node())
    assert cleared is not None and cleared.steps[-1] == RemoveHook("ann")


# -- reservations ---------------------------------------------------------------------------
def test_a_process_on_a_gpu_reserved_for_another_is_told_then_stopped_after_the_grace() -> None:
    # ann's p10 holds GPU 0 (and has a child, p11); GPU 0 is reserved for ben.
    plan = plan_policy(ActuatorState(), policy(reservations=reserved("ben")), ANN_TRAINS,
                       node())
    assert plan is not None and plan.steps == []
    told = plan_cycle(plan.state, ANN_TRAINS, node())
    [notice] = told.steps
    assert isinstance(notice, Notify) and notice.user == "ann" and notice.alert == RESERVATION
    assert "reserved by ben" in notice.text and "stopped in 60 s" in notice.text
    assert kinds(plan_cycle(told.state, ANN_TRAINS, node(now=NOW + 59))) == []
    stop = plan_cycle(told.state, ANN_TRAINS, node(now=NOW + 60))
    [step] = stop.steps
    assert isinstance(step, Stop) and step.alert == RESERVATION and step.track
    assert sorted(p.pid for p in step.targets) == [10, 11]


@pytest.mark.parametrize(("holder", "mode", "stopped"), [
    ("ann", "open", False), ("ann", "strict", False),  # her own reservation
    (None, "open", False), (None, "strict", True),  # unreserved: first come, or not at all
    ("ben", "open", True)])
def test_open_and_strict_modes(holder: str | None, mode: str, stopped: bool) -> None:
    plan = plan_policy(ActuatorState(), policy(reservations=reserved(holder, mode, grace=0)),
                       ANN_TRAINS, node())
    assert plan is not None
    first = plan_cycle(plan.state, ANN_TRAINS, node())
    second = plan_cycle(first.state, ANN_TRAINS, node())
    assert any(isinstance(s, Stop) for s in second.steps) == stopped


def test_another_nodes_reservations_and_protected_users_are_left_alone() -> None:
    elsewhere = plan_policy(ActuatorState(), policy(reservations=reserved("ben", "strict",
                                                                          node_name="gpu02")),
                            ANN_TRAINS, node())
    assert elsewhere is not None and elsewhere.state.reserved == ()
    strict = plan_policy(ActuatorState(), policy(reservations=reserved("ben", "strict")),
                         ANN_TRAINS, node(protected=frozenset({"ann"})))
    assert strict is not None
    assert plan_cycle(strict.state, ANN_TRAINS, node(protected=frozenset({"ann"}))).steps == []


def test_notices_are_told_once_on_the_nodes_they_name() -> None:
    notices = (Notice(id=1, user="ann", nodes=("gpu01",), text="granted"),
               Notice(id=2, user="ben", nodes=("gpu02",), text="elsewhere"))
    first = plan_policy(ActuatorState(), policy(1, Reservations(notices=notices)),
                        ANN_TRAINS, node())
    assert first is not None
    assert [(s.user, s.text) for s in first.steps if isinstance(s, Notify)] == [
        ("ann", "granted")]
    again = plan_policy(first.state, policy(2, Reservations(notices=notices)), ANN_TRAINS,
                        node())
    assert again is not None and not any(isinstance(s, Notify) for s in again.steps)
    assert again.state.told == [1]


# -- idle-GPU holding -----------------------------------------------------------------------
def idle_since(snap: Snapshot, user: str, since: float) -> Snapshot:
    """`snap` with `user`'s job j idle-holding GPU 0 since `since`."""
    snap.idle_since[(user, "j", "0", "GPU-0", "A100")] = since
    return snap


def test_a_job_holding_a_gpu_idle_is_stopped_only_once_the_site_says_so() -> None:
    snap = idle_since(snapshot([proc(10, 1000), proc(11, 1000, ppid=10)], on_gpu=(10,)),
                      "ann", NOW - 100)
    assert plan_cycle(ActuatorState(), snap, node()).steps == []  # action none: never
    assert plan_cycle(ActuatorState(), snap, node(idle="stop", idle_after=101)).steps == []
    assert plan_cycle(ActuatorState(), snap, node(idle="release")).steps == []  # no reservation
    [stop] = plan_cycle(ActuatorState(), snap, node(idle="stop", idle_after=100)).steps
    assert isinstance(stop, Stop) and stop.alert == IDLE and stop.track
    assert sorted(p.pid for p in stop.targets) == [10, 11]
    assert "it has held GPU 0 on gpu01 idle for 1m since you were told" in stop.why
    protected = node(idle="stop", protected=frozenset({"ann"}))
    assert plan_cycle(ActuatorState(), snap, protected).steps == []


def test_a_reservation_held_idle_is_released_once_or_its_holders_processes_stopped() -> None:
    snap = snapshot([proc(10, 1000), proc(20, 1001)], on_gpu=(10, 20))  # ben: an intruder

    def idle_steps(plan: Plan) -> list[object]:
        return [s for s in plan.steps if s not in intruder.steps]
    intruder = plan_cycle(plan_policy(ActuatorState(), policy(1, reserved("ann")), snap,
                                      node()).state, snap, node())  # type: ignore[union-attr]
    snap.idle_since[("ann", "reservation-7", "0", "GPU-0", "A100")] = NOW - 100
    start = plan_policy(ActuatorState(), policy(1, reserved("ann")), snap, node())
    assert start is not None
    early = plan_cycle(start.state, snap, node(idle="release", idle_after=101))
    assert idle_steps(early) == [] and early.state.idle_released == []
    plan = plan_cycle(start.state, snap, node(idle="release", idle_after=100))
    [record] = idle_steps(plan)
    assert isinstance(record, Record) and (record.user, record.action, record.alert) == (
        "ann", "release", IDLE)
    assert "reservation 7 (GPU 0 on gpu01) held idle for 1m" in record.detail
    assert plan.state.idle_released == [7]
    assert idle_steps(plan_cycle(plan.state, snap, node(idle="release"))) == []  # once
    # The enforcer's next policy no longer has the reservation: nothing is left to ask.
    ended = plan_policy(plan.state, policy(2), snap, node(idle="release"))
    assert ended is not None and ended.state.idle_released == []
    # Stopping instead: the holder's processes on the reserved GPU, nobody else's.
    [stop] = idle_steps(plan_cycle(start.state, snap, node(idle="stop")))
    assert isinstance(stop, Stop) and [p.pid for p in stop.targets] == [10]


# -- the safety property, on the planner ----------------------------------------------------
tables = st.lists(st.tuples(st.sampled_from(sorted(NAMES)), st.booleans(), st.integers(0, 5)),
                  min_size=1, max_size=20)
user_policies = st.dictionaries(st.sampled_from(sorted(UIDS)), st.builds(
    UserPolicy, block=st.booleans(), kill=st.booleans(),
    cpu_quota_percent=st.one_of(st.none(), st.integers(1, 100)),
    reasons=st.just((KILL,))), max_size=5)


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(table=tables, first=user_policies, second=user_policies,
       protected=st.frozensets(st.sampled_from(sorted(UIDS)), max_size=2),
       dry_run=st.booleans(), holder=st.sampled_from([None, *sorted(UIDS)]),
       mode=st.sampled_from(["open", "strict"]), idle=st.booleans())
def test_no_plan_ever_targets_a_process_it_must_not(
        table: list[tuple[int, bool, int]], first: dict[str, UserPolicy],
        second: dict[str, UserPolicy], protected: frozenset[str], dry_run: bool,
        holder: str | None, mode: str, idle: bool) -> None:
    """Whatever the policies and the process table: every process a plan would signal belongs
    to the user it is planned for, who may be touched, and holds a GPU or descends from a GPU
    process of that user; a blocked user's baseline is stopped only by a kill; a limit or a
    notice goes only to users that may be touched. With GPU 0 reserved (or not, in either mode)
    the same holds, and a reservation's holder is never stopped for using it; so it does with
    every GPU job idle-holding and the node stopping such jobs at once."""
    procs = [proc(100 + i, uid, 100 + parent if parent < i else 1)
             for i, (uid, _, parent) in enumerate(table)]
    snap = snapshot(procs, tuple(100 + i for i, (_, gpu, _) in enumerate(table) if gpu))
    gpu_pids = {h.pid for h in snap.holders}
    by_pid = {p.pid: p for p in procs}
    where = node(dry_run=dry_run, protected=protected, grace=0,
                 idle="stop" if idle else "none")
    if idle:
        for h in snap.holders:
            idle_since(snap, h.user, NOW - 1000)
    state = ActuatorState()
    for version, wanted in enumerate((first, second), 1):
        plan = plan_policy(state, policy(version, reserved(holder, mode, grace=0), **wanted),
                           snap, where)
        assert plan is not None
        told = plan_cycle(plan.state, snap, where)
        cycle = plan_cycle(told.state, snap, where)  # an intruder is stopped at the second
        for step in [*plan.steps, *told.steps, *cycle.steps]:
            if not isinstance(step, Stop | Limit | Notify):
                continue
            uid = UIDS[step.user]
            assert where.refusal(uid) is None, step
            if not isinstance(step, Stop):
                continue
            for p in step.targets:
                assert p.identity.uid == uid
                chain = p
                while chain.pid not in gpu_pids:  # up to the GPU process it descends from
                    chain = by_pid[chain.ppid]
                    assert chain.identity.uid == uid
            if step.alert == RESERVATION:
                assert step.user != holder
        for step in cycle.steps:  # a block alone never stops what ran when it began
            user = (cycle.state.users[step.user] if isinstance(step, Stop)
                    and step.alert not in (RESERVATION, IDLE) else None)
            if user is not None and user.kill_since is None and isinstance(step, Stop):
                assert not {p.key for p in step.targets} & user.baseline
        state = plan_grace(cycle.state, where.now).state


# -- and all of the above without root ------------------------------------------------------
@pytest.mark.root
def test_the_planner_needs_no_privilege() -> None:
    """Every test above, again, in a child that gave up root for nobody (65534)."""
    cases: list[Callable[[], None]] = [
        test_a_block_leaves_running_work_alone_and_notifies_once,
        test_new_gpu_work_of_a_blocked_user_is_stopped_with_its_tree,
        test_kill_stops_every_gpu_tree_and_tracks_them_only_while_blocked,
        test_lifting_a_block_forgets_what_was_being_stopped,
        test_new_processes_of_a_throttled_user_join_the_quota_except_under_systemd,
        test_an_older_or_equal_version_changes_nothing,
        test_an_unknown_user_is_forgotten_without_a_step,
        test_sigkill_follows_once_the_grace_is_over,
        test_the_hook_says_what_is_in_force_and_whether_it_is_a_dry_run,
        test_no_plan_ever_targets_a_process_it_must_not,
        *[lambda a=a: test_a_throttle_is_planned_as_the_node_can_do_it(*a)
          for a in [("cgroup1", False, ["Limit", "WriteHook"]),
                    (None, False, ["Record:throttle:unsupported", "WriteHook"])]],
        *[lambda u=u, p=p: test_root_system_and_protected_users_are_refused_whole(u, p)
          for u, p in [("root", frozenset()), ("ann", frozenset({"ann"}))]],
    ]
    if os.geteuid() != 0:
        for case in cases:
            case()
        return
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.close(read)
        message = b"ok"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.chdir("/")
            assert os.geteuid() == 65534
            for case in cases:
                case()
        except BaseException as exc:
            message = repr(exc).encode()[:4000]
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read()
    os.waitpid(child, 0)
    assert result == b"ok", result.decode()
