"""The node's side of enforcement: apply the enforcer's policy to this node's processes.

`apply()` takes a new policy (pushed or pulled) and acts on what changed for each user;
`cycle()` runs after every sampling cycle and stops GPU processes a block forbids, sends
SIGKILL once a grace period is over, and keeps new processes of throttled users in their quota.
Everything it does is logged, counted, and queued as a report for the enforcer's audit log.
The state (what was applied, the baselines, pending SIGKILLs) survives restarts.
"""

from __future__ import annotations

import logging
import pwd
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ValidationError

from exporter.hookfile import remove_hook, write_hook
from exporter.procs import ProcSample
from exporter.sampler import Snapshot
from exporter.signals import Signaller, Target, tell_user
from exporter.throttle import CpuLimiter, LimitError
from gpuacct.config import ActuatorSettings
from gpuacct.files import write_atomically
from gpuacct.policy import NodeAction, NodePolicy, UserPolicy

log = logging.getLogger(__name__)
MAX_REPORTS = 10_000


class Applied(BaseModel):
    """What is in force for one user on this node."""

    uid: int
    policy: UserPolicy = UserPolicy()
    block_since: float | None = None
    baseline: set[tuple[int, int]] = set()  # (pid, start) running when the block applied
    kill_since: float | None = None
    quota: int | None = None  # percent of one CPU, as applied
    limited: set[tuple[int, int]] = set()  # processes already put under the quota


class Stopping(BaseModel):
    """A process sent SIGTERM, to get SIGKILL at `deadline` if it is still there."""

    user: str
    target: tuple[int, int, int, str]  # pid, start ticks, uid, name
    deadline: float
    alert: str


class ActuatorState(BaseModel):
    version: int = -1
    users: dict[str, Applied] = {}
    stopping: list[Stopping] = []


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
                 uid_of: Callable[[str], int | None] = _uid) -> None:
        self.settings, self.node = settings, node
        self.signaller, self.limiter = signaller, limiter
        self._latest, self._tell, self._clock, self._uid_of = latest, tell, clock, uid_of
        self._lock = threading.RLock()
        self.state = self._load()
        self.reports: list[NodeAction] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.last_applied = 0.0

    # -- persistence ------------------------------------------------------------------------
    def _load(self) -> ActuatorState:
        try:
            return ActuatorState.model_validate_json(self.settings.state_file.read_bytes())
        except FileNotFoundError:
            return ActuatorState()
        except (OSError, ValidationError) as exc:
            log.error("actuator state %s unusable (%s): waiting for the enforcer's policy",
                      self.settings.state_file, exc)
            return ActuatorState()

    def _save(self) -> None:
        try:
            write_atomically(self.settings.state_file, self.state.model_dump_json().encode(),
                             mode=0o600)
        except OSError as exc:
            log.error("cannot save actuator state to %s: %s", self.settings.state_file, exc)

    # -- reporting --------------------------------------------------------------------------
    def _record(self, user: str, action: str, result: str, detail: str = "",
                alert: str = "") -> None:
        self.counts[(action, result)] += 1
        level = logging.WARNING if result in ("failed", "refused") else logging.INFO
        log.log(level, "%s %s: %s %s", action, user, result, detail)
        self.reports.append(NodeAction(id=uuid.uuid4().hex, at=self._clock(), user=user,
                                       action=action, result=result, detail=detail,
                                       alert=alert))
        del self.reports[:-MAX_REPORTS]

    def take_reports(self) -> list[NodeAction]:
        with self._lock:
            taken, self.reports = self.reports, []
            return taken

    def return_reports(self, reports: list[NodeAction]) -> None:
        """Reports that could not be delivered go back to the front of the queue."""
        with self._lock:
            self.reports[:0] = reports
            del self.reports[:-MAX_REPORTS]

    # -- applying a policy ------------------------------------------------------------------
    def apply(self, policy: NodePolicy) -> bool:
        """Act on what changed; False if the policy is not newer than the one in force."""
        with self._lock:
            if policy.version <= self.state.version:
                return False
            snapshot = self._latest()
            for user in sorted(self.state.users.keys() | policy.users.keys()):
                self._apply_user(user, policy.users.get(user, UserPolicy()), snapshot)
            self.state.version = policy.version
            self.last_applied = self._clock()
            self._save()
            return True

    def _apply_user(self, user: str, wanted: UserPolicy, snapshot: Snapshot) -> None:
        uid = self._uid_of(user)
        if uid is None:
            self.state.users.pop(user, None)
            return  # no such user here: nothing of theirs runs on this node
        applied = self.state.users.get(user) or Applied(uid=uid)
        now = self._clock()
        refused = self.signaller.refusal(uid)
        if refused and wanted != UserPolicy():
            self._record(user, "policy", "refused", refused)
            wanted = UserPolicy()
        told = {r.alert for r in applied.policy.reasons}
        for reason in wanted.reasons:
            if reason.alert not in told:
                text = f"{reason.summary}\n{reason.description}".strip() or reason.alert
                self._notify(uid, user, text, reason.alert)
        mine = [p for p in snapshot.procs if p.identity.uid == uid]
        if wanted.block and applied.block_since is None:
            applied.block_since = now
            applied.baseline = {p.key for p in mine}
            self._record(user, "block", self._result(), f"{len(mine)} running processes left "
                         "alone", self._alert(wanted, "block", "kill"))
        elif not wanted.block and applied.block_since is not None:
            applied.block_since, applied.baseline = None, set()
            self._record(user, "unblock", self._result())
        if wanted.kill and applied.kill_since is None:
            applied.kill_since = now
            alert = self._alert(wanted, "kill")
            targets = self._gpu_trees(user, snapshot, spare=set())
            self._record(user, "kill", self._result(), f"{len(targets)} GPU processes", alert)
            self._stop(user, targets, alert, "its account ran out")
        elif not wanted.kill:
            applied.kill_since = None
        if not wanted.block:  # recharged: whatever was still to be killed may live
            self.state.stopping = [s for s in self.state.stopping if s.user != user]
        self._throttle(user, uid, applied, wanted.cpu_quota_percent, mine)
        applied.policy = wanted
        if wanted == UserPolicy():
            self.state.users.pop(user, None)
            remove_hook(self.settings.hook_dir, user)
        else:
            self.state.users[user] = applied
            write_hook(self.settings.hook_dir, user, uid, wanted, self.settings.dry_run, now)

    @staticmethod
    def _alert(policy: UserPolicy, *actions: str) -> str:
        return next((r.alert for r in policy.reasons if r.action in actions), "")

    def _result(self) -> str:
        return "dry_run" if self.settings.dry_run else "ok"

    def _notify(self, uid: int, user: str, text: str, alert: str) -> None:
        if self.settings.dry_run:
            self._record(user, "notify", "dry_run", text.splitlines()[0], alert)
            return
        terminals = self._tell(uid, f"gpuacct: {text}")
        self._record(user, "notify", "ok", f"{terminals} terminals: {text.splitlines()[0]}",
                     alert)

    def _throttle(self, user: str, uid: int, applied: Applied, quota: int | None,
                  mine: list[ProcSample]) -> None:
        if quota == applied.quota:
            return
        if self.limiter is None:
            self._record(user, "throttle", "unsupported", "no CPU limiter on this node")
        elif self.settings.dry_run:
            self._record(user, "throttle" if quota else "unthrottle", "dry_run", f"{quota}%")
        else:
            try:
                if quota:
                    self.limiter.limit(uid, quota, [p.pid for p in mine])
                    applied.limited = {p.key for p in mine}
                else:
                    self.limiter.lift(uid)
                    applied.limited = set()
                self._record(user, "throttle" if quota else "unthrottle", "ok",
                             f"{quota}% of one CPU via {self.limiter.name}" if quota else "")
            except LimitError as exc:
                self._record(user, "throttle" if quota else "unthrottle", "failed", str(exc))
                return
        applied.quota = quota

    # -- every sampling cycle ---------------------------------------------------------------
    def cycle(self, snapshot: Snapshot) -> None:
        with self._lock:
            before = len(self.reports)
            for user, applied in list(self.state.users.items()):
                if applied.block_since is not None:
                    allowed = set() if applied.kill_since is not None else applied.baseline
                    fresh = self._gpu_trees(user, snapshot, spare=allowed)
                    if fresh:
                        alert = self._alert(applied.policy, "kill", "block")
                        self._stop(user, fresh, alert, "new GPU work is blocked")
                mine = [p for p in snapshot.procs if p.identity.uid == applied.uid]
                if (applied.quota and self.limiter and self.limiter.name != "systemd"
                        and not self.settings.dry_run
                        and any(p.key not in applied.limited for p in mine)):
                    try:
                        self.limiter.limit(applied.uid, applied.quota, [p.pid for p in mine])
                        applied.limited = {p.key for p in mine}
                    except LimitError as exc:
                        self._record(user, "throttle", "failed", str(exc))
            self._kill_after_grace()
            if len(self.reports) != before:
                self._save()

    def _gpu_trees(self, user: str, snapshot: Snapshot,
                   spare: set[tuple[int, int]]) -> list[ProcSample]:
        """The user's GPU processes but those in `spare`, each with its descendants, that are
        not yet being stopped."""
        by_pid = {p.pid: p for p in snapshot.procs}
        children: dict[int, list[ProcSample]] = defaultdict(list)
        for p in snapshot.procs:
            children[p.ppid].append(p)
        stopping = {(s.target[0], s.target[1]) for s in self.state.stopping}
        found: dict[tuple[int, int], ProcSample] = {}
        for holder in snapshot.holders:
            root = by_pid.get(holder.pid)
            if holder.user != user or root is None or root.key in spare:
                continue
            for p in _tree(root, children):
                if p.key not in stopping:
                    found[p.key] = p
        return list(found.values())

    def _stop(self, user: str, procs: Iterable[ProcSample], alert: str, why: str) -> None:
        deadline = self._clock() + self.settings.kill_grace_seconds
        stopped: dict[int, list[str]] = defaultdict(list)
        for p in procs:
            target = (p.pid, p.start_ticks, p.identity.uid, p.identity.name)
            result, detail = self.signaller.send(Target(*target), signal.SIGTERM)
            self._record(user, "terminate", result, detail, alert)
            if result in ("ok", "dry_run"):
                self.state.stopping.append(Stopping(user=user, target=target,
                                                    deadline=deadline, alert=alert))
            if result == "ok":
                stopped[p.identity.uid].append(f"{p.pid} ({p.identity.name})")
        for uid, names in stopped.items():
            self._tell(uid, f"gpuacct: stopping your GPU processes {', '.join(names)}: {why}. "
                       "Run gpuacct-balance for details.")

    def _kill_after_grace(self) -> None:
        now, waiting = self._clock(), []
        for s in self.state.stopping:
            if s.deadline > now:
                waiting.append(s)
                continue
            result, detail = self.signaller.send(Target(*s.target), signal.SIGKILL)
            if result != "gone":
                self._record(s.user, "kill_after_grace", result, detail, s.alert)
        self.state.stopping = waiting

    # -- metrics ----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """gpuacct_node_user_blocked{user} 1.0
        gpuacct_node_user_cpu_quota_ratio{user} 0.5
        gpuacct_enforcement_actions_total{action,result} 3.0
        gpuacct_node_policy_version 1763812345678.0"""
        blocked = GaugeMetricFamily("gpuacct_node_user_blocked",
                                    "1 while the user may start no new GPU work here.",
                                    labels=["user"])
        quota = GaugeMetricFamily("gpuacct_node_user_cpu_quota_ratio",
                                  "CPU the user's processes may use here, in CPUs.",
                                  labels=["user"])
        actions = CounterMetricFamily("gpuacct_enforcement_actions",
                                      "Enforcement actions taken on this node, by result.",
                                      labels=["action", "result"])
        with self._lock:
            for user, applied in sorted(self.state.users.items()):
                blocked.add_metric([user], float(applied.block_since is not None))
                if applied.quota and self.limiter is not None:  # else nothing was limited
                    quota.add_metric([user], applied.quota / 100)
            for (action, result), n in sorted(self.counts.items()):
                actions.add_metric([action, result], n)
            version = self.state.version
        yield blocked
        yield quota
        yield actions
        yield GaugeMetricFamily("gpuacct_node_policy_version",
                                "Version of the enforcement policy in force here.",
                                value=max(version, 0))
        yield GaugeMetricFamily("gpuacct_node_policy_applied_timestamp_seconds",
                                "When a newer policy was last applied here.",
                                value=self.last_applied)


def _tree(root: ProcSample, children: dict[int, list[ProcSample]]) -> Iterator[ProcSample]:
    stack, seen = [root], set()
    while stack:
        p = stack.pop()
        if p.key in seen:
            continue
        seen.add(p.key)
        yield p
        stack.extend(c for c in children.get(p.pid, ()) if c.identity.uid == root.identity.uid)
