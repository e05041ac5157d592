"""Deciding what enforcement does on this node, without doing it: pure functions from what is
in force, what the enforcer wants and the latest snapshot to the new state and the steps that
get there. `exporter.enforce.actuator` carries the steps out.

A step's outcome can still change the state, and each step says how: a SIGTERM that landed is
tracked for its SIGKILL, a CPU limit that failed leaves the old quota in force.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from exporter.enforce.state import ActuatorState, Applied, Intruder, ProcKey, Stopping
from exporter.usage.accounting import GpuHolder, gpu_index
from exporter.usage.procs import ProcSample
from exporter.usage.sampler import Snapshot
from gpuacct.allocation import RESERVATION_JOB_PREFIX
from gpuacct.policy import (
    Allowance,
    Held,
    NodeActionKind,
    NodePolicy,
    Reservations,
    Result,
    UserPolicy,
)
from gpuacct.wording import duration, memory

RESERVATION = "reservation"  # the alert name in reports about reserved GPUs
IDLE = "idle"  # ... and about GPU processes stopped for holding a GPU idle
ALLOWANCE = "allowance"  # ... and about GPU processes that would pass the user's allowance

UNLIMITED = UserPolicy()
K = TypeVar("K")


@dataclass(frozen=True)
class Record:
    """A decision to report (block, unblock, kill, refused...) that needs no kernel call."""

    user: str
    action: NodeActionKind
    result: Result
    detail: str = ""
    alert: str = ""


@dataclass(frozen=True)
class Notify:
    user: str
    uid: int
    text: str
    alert: str


@dataclass(frozen=True)
class Stop:
    """SIGTERM to each target, then tell the user once why; a target that took the signal is
    tracked for SIGKILL at `deadline` if `track`."""

    user: str
    targets: tuple[ProcSample, ...]
    alert: str
    why: str
    deadline: float
    track: bool


@dataclass(frozen=True)
class Kill:
    """SIGKILL for a process whose grace ran out."""

    stopping: Stopping


@dataclass(frozen=True)
class Limit:
    """Put the user's processes under `quota` percent of one CPU (None: lift the limit). A
    change of quota that fails leaves `previous` in force; a re-limit only reports."""

    user: str
    uid: int
    quota: int | None
    pids: tuple[int, ...]
    keys: frozenset[ProcKey]
    previous: int | None
    relimit: bool = False


@dataclass(frozen=True)
class WriteHook:
    user: str
    uid: int
    policy: UserPolicy
    dry_run: bool
    now: float


@dataclass(frozen=True)
class RemoveHook:
    user: str


Step = Record | Notify | Stop | Kill | Limit | WriteHook | RemoveHook


@dataclass(frozen=True)
class Node:
    """What the planner knows of the node besides the snapshot: all of it injected."""

    now: float
    dry_run: bool
    kill_grace_seconds: float
    name: str  # this node's, as reservations name it
    limiter: str | None  # the CPU limiter's name; None: this node has none
    uid_of: Callable[[str], int | None]  # the passwd database
    refusal: Callable[[int], str | None]  # why a uid is never touched (root, protected...)
    # This long after a job became idle-holding, exporter.idle.action: none, release, stop.
    idle_action: str = "none"
    idle_action_after: float = 0.0


@dataclass
class Plan:
    state: ActuatorState
    steps: list[Step] = field(default_factory=list)


def plan_policy(state: ActuatorState, policy: NodePolicy, snapshot: Snapshot,
                node: Node) -> Plan | None:
    """What a new policy changes; None if it is not newer than the one in force."""
    if policy.version <= state.version:
        return None
    plan = Plan(state.model_copy(deep=True))
    for user in sorted(state.users.keys() | policy.users.keys()):
        _plan_user(plan, user, policy.users.get(user, UNLIMITED), snapshot, node)
    _plan_reservations(plan, policy.reservations, node)
    plan.state.version = policy.version
    return plan


def _plan_reservations(plan: Plan, reservations: Reservations, node: Node) -> None:
    """Keep this node's reservations and tell users the notices meant for this node, once."""
    state = plan.state
    state.mode, state.reservation_grace = reservations.mode, reservations.grace_seconds
    state.reserved = reservations.nodes.get(node.name, ())
    held = {r.id for r in state.reserved}
    state.idle_released = [id for id in state.idle_released if id in held]
    told = set(state.told)
    for notice in reservations.notices:
        if node.name in notice.nodes and notice.id not in told:
            uid = node.uid_of(notice.user)
            if uid is not None:
                plan.steps.append(Notify(notice.user, uid, notice.text, RESERVATION))
            told.add(notice.id)
    state.told = sorted(told & {n.id for n in reservations.notices})


def plan_cycle(state: ActuatorState, snapshot: Snapshot, node: Node) -> Plan:
    """After a sampling cycle: stop GPU work a block forbids and keep new processes of
    throttled users in their quota. Then, once these steps are done, `plan_grace`."""
    plan = Plan(state.model_copy(deep=True))
    new = plan.state
    for user, applied in new.users.items():
        if applied.block_since is not None:
            allowed = set() if applied.kill_since is not None else applied.baseline
            fresh = gpu_trees(new, user, snapshot, spare=allowed)
            if fresh:
                plan.steps.append(Stop(user, tuple(fresh), _alert(applied.policy, "kill", "block"),
                                       "new GPU work is blocked",
                                       node.now + node.kill_grace_seconds, track=True))
        mine = _procs_of(snapshot, applied.uid)
        # systemd's slice holds new processes by itself; cgroup limiters must move them in.
        if (applied.quota and node.limiter and node.limiter != "systemd" and not node.dry_run
                and any(p.key not in applied.limited for p in mine)):
            plan.steps.append(Limit(user, applied.uid, applied.quota, tuple(p.pid for p in mine),
                                    frozenset(p.key for p in mine), applied.quota,
                                    relimit=True))
    _plan_allowances(plan, snapshot, node)
    _plan_intruders(plan, snapshot, node)
    if node.idle_action != "none":
        _plan_idle(plan, snapshot, node)
    return plan


def _plan_idle(plan: Plan, snapshot: Snapshot, node: Node) -> None:
    """exporter.idle.action for a job idle-holding a GPU `idle_action_after` past the point it
    became so (the user was told then, by the rules): release the reservation it is, or stop
    its processes on that GPU (a reservation's: the holder's on the reserved GPU)."""
    state = plan.state
    by_pid, children, stopping = _tables(state, snapshot)
    held = {r.id for r in state.reserved}
    for (user, job, label, uuid, _model), since in sorted(snapshot.idle_since.items()):
        if node.now - since < node.idle_action_after:
            continue
        reservation = _reservation_id(job)
        if node.idle_action == "release":
            if reservation in held and reservation not in state.idle_released:
                state.idle_released.append(reservation)
                plan.steps.append(Record(user, "release", "dry_run" if node.dry_run else "ok",
                                         f"reservation {reservation} (GPU {label} on "
                                         f"{node.name}) held idle for "
                                         f"{duration(node.now - since)} since you were told",
                                         IDLE))
            continue
        uid = node.uid_of(user)
        if uid is None or node.refusal(uid):
            continue
        roots = [by_pid[h.pid] for h in snapshot.holders if h.user == user and h.pid in by_pid
                 and (h.unit.uuid == uuid and h.job == job if reservation is None
                      else str(gpu_index(h.unit)) == label)]
        targets = {p.key: p for root in roots for p in _tree(root, children)
                   if p.key not in stopping}
        if targets:
            plan.steps.append(Stop(user, tuple(targets.values()), IDLE, f"it has held GPU "
                                   f"{label} on {node.name} idle for "
                                   f"{duration(node.now - since)} since you were told",
                                   node.now + node.kill_grace_seconds, track=True))


def _plan_allowances(plan: Plan, snapshot: Snapshot, node: Node) -> None:
    """At the moment a user's GPU process appears: let it in if what the user holds with it,
    here and (as the enforcer last counted) on the other nodes, fits their allowance, else stop
    it. A process that ends frees its share at once, so the next one starts; a process let in
    is never stopped for what others do after it."""
    state = plan.state
    by_pid, children, stopping = _tables(state, snapshot)
    stopping |= {p.key for step in plan.steps if isinstance(step, Stop) for p in step.targets}
    alive = {p.key for p in snapshot.procs}
    owner = {by_pid[h.pid].key: h.user for h in snapshot.holders if h.pid in by_pid}
    units = _units(snapshot, lambda h: by_pid[h.pid].key if h.pid in by_pid else None)
    if state.admitted is None:  # the first cycle: what runs already is let in
        state.admitted = {u: sorted(k for k, o in owner.items() if o == u)
                          for u in set(owner.values())}
        return
    admitted: dict[str, list[ProcKey]] = {}
    for user in sorted(set(owner.values())):
        allowance = state.allowances.of(user)
        kept = [k for k in state.admitted.get(user, ()) if k in alive]
        holding: dict[str, int] = {}
        for key in kept:
            holding = _with(holding, units.get(key, {}))
        uid = node.uid_of(user)
        exempt = uid is None or node.refusal(uid) is not None
        elsewhere = state.allowances.elsewhere(user, node.name)
        for key in sorted((k for k, u in owner.items() if u == user and k not in kept
                           and k not in stopping), key=lambda k: (k[1], k[0])):
            after = _with(holding, units[key])
            why = None if exempt else _over(allowance, elsewhere, after)
            if why is not None:
                plan.steps.append(Stop(user, tuple(_tree(by_pid[key[0]], children)), ALLOWANCE,
                                       why, node.now + node.kill_grace_seconds, track=True))
                if not node.dry_run:
                    continue
            kept.append(key)
            holding = after
        admitted[user] = kept
    state.admitted = admitted


def _with(holding: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """GPU units and their memory, more added."""
    return {u: holding.get(u, 0) + more.get(u, 0) for u in holding.keys() | more.keys()}


def _over(allowance: Allowance, elsewhere: Held, holding: dict[str, int]) -> str | None:
    """Why holding `holding` here besides `elsewhere` passes the allowance; None: it fits."""
    gpus = len(holding) + elsewhere.gpus
    if allowance.gpus is not None and gpus > allowance.gpus:
        return f"it would be on {gpus} GPUs at once; you may use {allowance.gpus}"
    used = sum(holding.values()) + elsewhere.gpu_memory_bytes
    if allowance.gpu_memory_bytes is not None and used > allowance.gpu_memory_bytes:
        return (f"it would hold {memory(used)} of GPU memory at once; you may hold "
                f"{memory(allowance.gpu_memory_bytes)}")
    return None


def _units(snapshot: Snapshot, key: Callable[[GpuHolder], K | None]
           ) -> dict[K, dict[str, int]]:
    """The GPU units (and the memory on each) the snapshot's holders hold, by `key` (None:
    left out)."""
    units: dict[K, dict[str, int]] = defaultdict(dict)
    for h in snapshot.holders:
        k = key(h)
        if k is not None:
            held = units[k]
            held[h.unit.label] = held.get(h.unit.label, 0) + (h.used_memory_bytes or 0)
    return units


def held(snapshot: Snapshot) -> dict[str, Held]:
    """What each user's GPU processes hold on this node: GPU units and memory."""
    return {user: Held(gpus=len(u), gpu_memory_bytes=sum(u.values()))
            for user, u in sorted(_units(snapshot, lambda h: h.user).items())}


def blocking(policy: UserPolicy, allowance: Allowance) -> bool:
    """Whether new GPU work is refused. A block whose every reason is an allowance this node
    holds the user to is left to the allowance: a new process over it is stopped at once, and
    one that fits starts even while the alert that records the limit still fires."""
    blocks = [r for r in policy.reasons if r.action in ("block", "kill")]
    left = bool(blocks) and all(r.action == "block" and r.allowance is not None
                                and allowance.holds(r.allowance) for r in blocks)
    return policy.block and not left


def _reservation_id(job: str) -> int | None:
    """The reservation a job name stands for (`reservation-<id>`), if it is one."""
    id = job.removeprefix(RESERVATION_JOB_PREFIX)
    return int(id) if id != job and id.isdigit() else None


def _plan_intruders(plan: Plan, snapshot: Snapshot, node: Node) -> None:
    """A process on a GPU reserved for someone else, or in strict mode on a GPU its user has
    not reserved, is told why, then stopped once the grace is over."""
    state = plan.state
    holders = {r.gpu: r for r in state.reserved}
    by_pid, children, stopping = _tables(state, snapshot)
    seen: dict[str, Intruder] = {}
    for holder in snapshot.holders:
        gpu = int(holder.unit.label.split("/")[0])
        owner = holders.get(gpu)
        if (owner.user if owner else None) == holder.user or (
                owner is None and state.mode != "strict"):
            continue
        proc = by_pid.get(holder.pid)
        uid = node.uid_of(holder.user) if proc else None
        if proc is None or uid is None or node.refusal(uid) or proc.key in stopping:
            continue
        key = f"{proc.pid}:{proc.start_ticks}"
        intruder = state.intruders.get(key) or Intruder(user=holder.user, gpu=gpu,
                                                        since=node.now)
        seen[key] = intruder
        why = (f"GPU {gpu} on {node.name} is reserved by {owner.user} for "
               f"{duration(max(owner.ends - node.now, 0))} more" if owner else
               f"GPU {gpu} on {node.name} needs a reservation (gpuacct reserve)")
        if key not in state.intruders:
            plan.steps.append(Notify(holder.user, uid, f"{why}: your process {proc.pid} "
                                     f"({proc.identity.name}) is stopped in "
                                     f"{state.reservation_grace:g} s", RESERVATION))
        elif node.now - intruder.since >= state.reservation_grace:
            plan.steps.append(Stop(holder.user, tuple(_tree(proc, children)), RESERVATION,
                                   why, node.now + node.kill_grace_seconds, track=True))
            del seen[key]
    state.intruders = seen


def plan_grace(state: ActuatorState, now: float) -> Plan:
    """SIGKILL for every process still being stopped whose grace is over."""
    plan = Plan(state.model_copy(deep=True))
    waiting = []
    for s in plan.state.stopping:
        if s.deadline > now:
            waiting.append(s)
        else:
            plan.steps.append(Kill(s))
    plan.state.stopping = waiting
    return plan


def _plan_user(plan: Plan, user: str, wanted: UserPolicy, snapshot: Snapshot,
               node: Node) -> None:
    state, steps = plan.state, plan.steps
    uid = node.uid_of(user)
    if uid is None:
        state.users.pop(user, None)
        return  # no such user here: nothing of theirs runs on this node
    applied = state.users.get(user) or Applied(uid=uid)
    result: Result = "dry_run" if node.dry_run else "ok"
    refused = node.refusal(uid)
    if refused and wanted != UNLIMITED:
        steps.append(Record(user, "policy", "refused", refused))
        wanted = UNLIMITED
    told = {r.alert for r in applied.policy.reasons}
    for reason in wanted.reasons:
        if reason.alert not in told:
            text = f"{reason.summary}\n{reason.description}".strip() or reason.alert
            steps.append(Notify(user, uid, text, reason.alert))
    mine = _procs_of(snapshot, uid)
    block = blocking(wanted, state.allowances.of(user))
    if block and applied.block_since is None:
        applied.block_since = node.now
        applied.baseline = {p.key for p in mine}
        steps.append(Record(user, "block", result, f"{len(mine)} running processes left alone",
                            _alert(wanted, "block", "kill")))
    elif not block and applied.block_since is not None:
        applied.block_since, applied.baseline = None, set()
        steps.append(Record(user, "unblock", result))
    if wanted.kill and applied.kill_since is None:
        applied.kill_since = node.now
        alert = _alert(wanted, "kill")
        targets = gpu_trees(state, user, snapshot, spare=set())
        steps.append(Record(user, "kill", result, f"{len(targets)} GPU processes", alert))
        # Without a block, nothing is left to kill after the grace (the user was recharged).
        steps.append(Stop(user, tuple(targets), alert, "its account ran out",
                          node.now + node.kill_grace_seconds, track=wanted.block))
    elif not wanted.kill:
        applied.kill_since = None
    if not block:  # recharged: whatever was still to be killed may live
        state.stopping = [s for s in state.stopping if s.user != user or s.alert == ALLOWANCE]
    _plan_quota(steps, user, uid, applied, wanted.cpu_quota_percent, mine, node)
    applied.policy = wanted
    if wanted == UNLIMITED:
        state.users.pop(user, None)
        steps.append(RemoveHook(user))
    else:
        state.users[user] = applied
        steps.append(WriteHook(user, uid, wanted.model_copy(update={"block": block}),
                               node.dry_run, node.now))


def _plan_quota(steps: list[Step], user: str, uid: int, applied: Applied, quota: int | None,
                mine: list[ProcSample], node: Node) -> None:
    if quota == applied.quota:
        return
    action: NodeActionKind = "throttle" if quota else "unthrottle"
    if node.limiter is None:
        steps.append(Record(user, "throttle", "unsupported", "no CPU limiter on this node"))
    elif node.dry_run:
        steps.append(Record(user, action, "dry_run", f"{quota}%"))
    else:
        steps.append(Limit(user, uid, quota, tuple(p.pid for p in mine),
                           frozenset(p.key for p in mine), applied.quota))
    applied.quota = quota


def gpu_trees(state: ActuatorState, user: str, snapshot: Snapshot,
              spare: set[ProcKey]) -> list[ProcSample]:
    """The user's GPU processes but those in `spare`, each with its descendants of the same
    uid, that are not yet being stopped."""
    by_pid, children, stopping = _tables(state, snapshot)
    found: dict[ProcKey, ProcSample] = {}
    for holder in snapshot.holders:
        root = by_pid.get(holder.pid)
        if holder.user != user or root is None or root.key in spare:
            continue
        for p in _tree(root, children):
            if p.key not in stopping:
                found[p.key] = p
    return list(found.values())


def _tables(state: ActuatorState, snapshot: Snapshot) -> tuple[
        dict[int, ProcSample], dict[int, list[ProcSample]], set[ProcKey]]:
    """The snapshot's processes by pid and by parent, and what is being stopped already."""
    by_pid = {p.pid: p for p in snapshot.procs}
    children: dict[int, list[ProcSample]] = defaultdict(list)
    for p in snapshot.procs:
        children[p.ppid].append(p)
    return by_pid, children, {(s.target[0], s.target[1]) for s in state.stopping}


def _tree(root: ProcSample, children: dict[int, list[ProcSample]]) -> Iterator[ProcSample]:
    stack, seen = [root], set()
    while stack:
        p = stack.pop()
        if p.key in seen:
            continue
        seen.add(p.key)
        yield p
        stack.extend(c for c in children.get(p.pid, ()) if c.identity.uid == root.identity.uid)


def _procs_of(snapshot: Snapshot, uid: int) -> list[ProcSample]:
    return [p for p in snapshot.procs if p.identity.uid == uid]


def _alert(policy: UserPolicy, *actions: str) -> str:
    return next((r.alert for r in policy.reasons if r.action in actions), "")

