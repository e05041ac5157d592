"""The node's side of enforcement: plans from `exporter.enforce.plan`, carried out through the
injected kernel calls (signals, the CPU limiter, terminals, the hook files).

`apply()` takes a new policy (pushed or pulled); `cycle()` runs after every sampling cycle.
Everything done is reported (`reports`) for the enforcer's audit log, and the state survives
restarts (`StateFile`).
"""

from __future__ import annotations

import functools
import logging
import pwd
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import assert_never

from exporter.enforce.gating import DeviceGate, GateError, denied
from exporter.enforce.hookfile import remove_hook, write_hook
from exporter.enforce.plan import (
    Kill,
    Limit,
    Node,
    Notify,
    Plan,
    Record,
    RemoveHook,
    Step,
    Stop,
    WriteHook,
    held,
    plan_cycle,
    plan_grace,
    plan_policy,
)
from exporter.enforce.reports import Reports
from exporter.enforce.signals import Signaller, Target, read_identity, tell_user
from exporter.enforce.state import ActuatorState, StateFile, Stopping
from exporter.enforce.throttle import CpuLimiter, LimitError
from exporter.usage.accounting import gpu_index
from exporter.usage.procs import ProcSample
from exporter.usage.sampler import Snapshot
from gpuacct.config import ActuatorSettings
from gpuacct.policy import Held, NodeAction, NodeActionKind, NodePolicy

log = logging.getLogger(__name__)
UNATTRIBUTED = "(unattributed)"  # whose the stops of unattributed containers are, in the audit


def _uid(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


class Actuator:
    def __init__(self, settings: ActuatorSettings, node: str, signaller: Signaller,
                 limiter: CpuLimiter | None, latest: Callable[[], Snapshot],
                 tell: Callable[[int, str], int] = tell_user,
                 clock: Callable[[], float] = time.time,
                 uid_of: Callable[[str], int | None] = _uid,
                 gate: DeviceGate | None = None, gating: str = "off") -> None:
        self.settings, self.node = settings, node
        self.signaller, self.limiter = signaller, limiter
        self.gate, self.gating = gate, gating  # gating: the mechanism, or why there is none
        self._gate_failed: dict[str, str] = {}  # what -> the last failure, said once
        self._latest, self._tell, self._clock, self._uid_of = latest, tell, clock, uid_of
        self.lock = threading.RLock()  # the state: apply, cycle and the collector
        self.store = StateFile(settings.state_file)
        self.state = self.store.load()
        self.state.admitted = None  # a start never stops GPU work that runs already
        self.reports = Reports(clock)
        self.last_applied = 0.0
        self.last_used: dict[int, float] = {}  # reservation id -> holder last seen on it
        self.idle_action, self.idle_action_after = "none", 0.0  # exporter.idle
        self.unattributed_action = "none"  # exporter.unattributed.action
        self._unattributed_stops: dict[str, tuple[float, bool]] = {}  # id -> SIGTERM at, KILLed

    def _node(self) -> Node:
        return Node(now=self._clock(), dry_run=self.settings.dry_run,
                    kill_grace_seconds=self.settings.kill_grace_seconds, name=self.node,
                    idle_action=self.idle_action, idle_action_after=self.idle_action_after,
                    limiter=self.limiter.name if self.limiter else None,
                    uid_of=self._uid_of, refusal=self.signaller.refusal)

    def reserved_gpus(self) -> dict[int, tuple[str, int]]:
        """This node's GPUs reserved now: index -> (holder, reservation id)."""
        now = self._clock()
        with self.lock:
            return {r.gpu: (r.user, r.id) for r in self.state.reserved if r.ends > now}

    def idle_releases(self) -> tuple[int, ...]:
        """The reservations this node has decided to end for being held idle, until the
        enforcer's policy no longer has them."""
        if self.settings.dry_run:
            return ()
        with self.lock:
            held = {r.id for r in self.state.reserved}
            return tuple(id for id in self.state.idle_released if id in held)

    def _note_use(self, snapshot: Snapshot) -> None:
        on_gpu = {(gpu_index(h.unit), h.user) for h in snapshot.holders}
        now = self._clock()
        used = {}
        for r in self.state.reserved:
            seen = (r.gpu, r.user) in on_gpu
            used[r.id] = now if seen else self.last_used.get(r.id, now)
        self.last_used = used

    # -- the enforcer's reports queue (see PolicySync)
    def take_reports(self) -> list[NodeAction]:
        return self.reports.take()

    def return_reports(self, reports: list[NodeAction]) -> None:
        self.reports.give_back(reports)

    # -- deciding, then acting
    def held(self) -> dict[str, Held]:
        """What each user's GPU processes hold here now, for the enforcer's count."""
        return held(self._latest())

    def apply(self, policy: NodePolicy) -> bool:
        """Act on what changed; False if the policy is not newer than the one in force. The
        allowances ride outside the version: they are taken from every policy."""
        with self.lock:
            if policy.allowances != self.state.allowances:
                self.state.allowances = policy.allowances
                self.store.save(self.state)
            plan = plan_policy(self.state, policy, self._latest(), self._node())
            if plan is None:
                return False
            self._carry_out(plan)
            self._close_devices(self._latest())
            self.last_applied = self._clock()
            self.store.save(self.state)
            return True

    def cycle(self, snapshot: Snapshot) -> None:
        with self.lock:
            self._note_use(snapshot)
            before = self.reports.recorded()
            self._carry_out(plan_cycle(self.state, snapshot, self._node()))
            self._carry_out(plan_grace(self.state, self._clock()))
            self._close_devices(snapshot)
            self._stop_unattributed(snapshot)
            if self.reports.recorded() != before:
                self.store.save(self.state)

    def _close_devices(self, snapshot: Snapshot) -> None:
        """Each user's GPU device nodes closed or opened as the state says, and the user's
        processes running now held to it, in the user's group or in the group of the user's
        container; never root, system or protected users."""
        gate = self.gate
        if gate is None or self.settings.dry_run:
            return
        procs: dict[int, list[ProcSample]] = defaultdict(list)
        contained: dict[str, ProcSample] = {}  # a container's processes share its group
        for p in snapshot.procs:
            if p.identity.container:
                contained.setdefault(p.identity.container, p)
            else:
                procs[p.identity.uid].append(p)
        gpus = {d.index for d in gate.devices}
        now = self._clock()
        for id, p in sorted(contained.items()):
            if self.signaller.refusal(p.identity.uid) is None:
                closed = denied(self.state, p.identity.user, gpus, now)
                self._gate(f"container {id[:12]} of {p.identity.user}",
                           functools.partial(gate.apply_container, id, p.pid, closed))
        gate.forget_containers(set(contained))
        for uid, mine in sorted(procs.items()):
            if self.signaller.refusal(uid) is None:
                closed = denied(self.state, mine[0].identity.user, gpus, now)
                self._gate(f"uid {uid}",
                           functools.partial(gate.apply, uid, closed, [p.key for p in mine]))

    def _gate(self, what: str, apply: Callable[[], None]) -> None:
        """One gating step; a failure logged once until it changes or passes."""
        try:
            apply()
        except GateError as exc:
            if self._gate_failed.get(what) != str(exc):
                log.warning("cannot gate the GPU devices of %s: %s", what, exc)
            self._gate_failed[what] = str(exc)
        else:
            self._gate_failed.pop(what, None)

    def _stop_unattributed(self, snapshot: Snapshot) -> None:
        """With exporter.unattributed.action stop: each container on a GPU that nobody could be
        found for is sent SIGTERM through its engine, SIGKILL after the grace. Root outside
        any container is never signalled: it is only counted (and alerted on)."""
        if self.unattributed_action != "stop":
            return
        now, grace = self._clock(), self.settings.kill_grace_seconds
        on_gpu = {who.id: who for who in snapshot.unattributed.values() if who.id}
        for id, who in sorted(on_gpu.items()):
            sent, killed = self._unattributed_stops.get(id, (None, False))
            if sent is not None and (killed or now - sent < grace):
                continue
            sig = signal.SIGTERM if sent is None else signal.SIGKILL
            result, detail = self.signaller.to_container(
                id, sig, f"{sig.name} to unattributed container {who.container} ({who.image})")
            self.reports.record(UNATTRIBUTED, "terminate" if sent is None else
                                "kill_after_grace", result, detail)
            self._unattributed_stops[id] = (now if sent is None else sent, sent is not None)
        for id in self._unattributed_stops.keys() - on_gpu.keys():
            del self._unattributed_stops[id]

    def place_session(self, user: str, pid: int) -> str:
        """A new login's session process held to the user's GPU device gating now, before
        its first command (the PAM hook asks): what was done, in words."""
        uid = self._uid_of(user)
        if uid is None:
            return f"{user} has no uid here"
        refused = self.signaller.refusal(uid)
        if refused:
            return f"not held: {refused}"
        if self.gate is None or self.settings.dry_run:
            return f"not held: GPU device gating is {self.gating}" if self.gate is None \
                else "not held: dry run"
        started = read_identity(pid)
        if started is None:
            return f"not held: pid {pid} is gone"
        with self.lock:
            closed = denied(self.state, user, {d.index for d in self.gate.devices},
                            self._clock())
            try:
                self.gate.apply(uid, closed, [(pid, started[0])])
            except GateError as exc:
                log.warning("cannot hold %s's new session: %s", user, exc)
                return f"not held: {exc}"
        return f"{len(closed)} GPUs closed" if closed else "nothing closed"

    def _carry_out(self, plan: Plan) -> None:
        self.state = plan.state
        for step in plan.steps:
            self._do(step, self.state)

    def _do(self, step: Step, state: ActuatorState) -> None:
        match step:
            case Record():
                self.reports.record(step.user, step.action, step.result, step.detail,
                                    step.alert)
            case Notify():
                self._notify(step)
            case Stop():
                self._stop(step, state)
            case Kill():
                result, detail = self.signaller.send(Target(*step.stopping.target),
                                                     signal.SIGKILL)
                if result != "gone":
                    self.reports.record(step.stopping.user, "kill_after_grace", result, detail,
                                        step.stopping.alert)
            case Limit():
                self._limit(step, state)
            case WriteHook():
                write_hook(self.settings.hook_dir, step.user, step.uid, step.policy,
                           step.dry_run, step.now)
            case RemoveHook():
                remove_hook(self.settings.hook_dir, step.user)
            case _:
                assert_never(step)

    def _notify(self, step: Notify) -> None:
        first = step.text.splitlines()[0]
        if self.settings.dry_run:
            self.reports.record(step.user, "notify", "dry_run", first, step.alert)
            return
        terminals = self._tell(step.uid, f"gpuacct: {step.text}")
        self.reports.record(step.user, "notify", "ok", f"{terminals} terminals: {first}",
                            step.alert)

    def _stop(self, step: Stop, state: ActuatorState) -> None:
        stopped: dict[int, list[str]] = defaultdict(list)
        for p in step.targets:
            target = (p.pid, p.start_ticks, p.identity.uid, p.identity.name,
                      p.identity.container)
            result, detail = self.signaller.send(Target(*target), signal.SIGTERM)
            self.reports.record(step.user, "terminate", result, detail, step.alert)
            if result in ("ok", "dry_run") and step.track:
                state.stopping.append(Stopping(user=step.user, target=target,
                                               deadline=step.deadline, alert=step.alert))
            if result == "ok":
                stopped[p.identity.uid].append(f"{p.pid} ({p.identity.name})")
        for uid, names in stopped.items():
            self._tell(uid, f"gpuacct: stopping your GPU processes {', '.join(names)}: "
                       f"{step.why}. Run gpuacct-balance for details.")

    def _limit(self, step: Limit, state: ActuatorState) -> None:
        assert self.limiter is not None  # planned only where there is one
        action: NodeActionKind = "throttle" if step.quota or step.relimit else "unthrottle"
        applied = state.users.get(step.user)
        # A container's processes stay in its engine's groups (which hold its own limits).
        contained = {p.pid for p in self._latest().procs if p.identity.container}
        try:
            if step.quota:
                self.limiter.limit(step.uid, step.quota,
                                   [pid for pid in step.pids if pid not in contained])
            else:
                self.limiter.lift(step.uid)
        except LimitError as exc:
            self.reports.record(step.user, action, "failed", str(exc))
            if applied is not None and not step.relimit:
                applied.quota = step.previous
            return
        if applied is not None:
            applied.limited = set(step.keys) if step.quota else set()
        if not step.relimit:
            self.reports.record(step.user, action, "ok", f"{step.quota}% of one CPU via "
                                f"{self.limiter.name}" if step.quota else "")
