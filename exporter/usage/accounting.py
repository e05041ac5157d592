"""One sampling cycle's usage: CPU seconds per job from /proc, GPU seconds per job from NVML.

CPU: each live process adds what its utime+stime grew by since the last cycle. A process that
exits between two cycles takes its last moments with it, but its parent's cutime+cstime grows by
the child's whole total when it reaps it; that growth, less what was already counted for the
vanished child, is credited to the child's job. Children never seen (short-lived) count for
the parent's job.

GPU: each GPU unit's time since the last cycle is shared among the distinct jobs holding it
(split 1/k, full, or by GPU memory). Processes nobody is billed for still take their share.
A reserved GPU is billed whole to its holder, as the job `reservation-<id>`, used or idle;
the processes on it (the holder's, or anyone's still being stopped) add nothing. Idle-holding
(exporter.idle) counts the GPU seconds of a job holding memory at (almost) no utilisation,
and of a reservation its holder's processes do not keep busy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.devices.base import GpuDevice, GpuUnit
from exporter.usage.counters import Cursor, GpuKey, JobInfo, JobKey, Streak, UsageState
from exporter.usage.procs import CLOCK_TICKS, ProcSample, Unattributed
from gpuacct.allocation import RESERVATION_JOB
from gpuacct.config import IdleSettings


@dataclass(frozen=True)
class GpuHolder:
    """One process on one GPU unit, attributed."""

    unit: GpuUnit
    pid: int
    user: str
    job: str
    used_memory_bytes: int | None
    sm_ratio: float | None


def account_cpu(state: UsageState, procs: list[ProcSample], now: float) -> None:
    live = {p.key: p for p in procs}
    by_pid = {p.pid: p for p in procs}

    # Vanished processes, by the live parent that reaped them (the parent started first).
    reaped: dict[tuple[int, int], list[tuple[JobKey, int]]] = defaultdict(list)
    for key, gone in state.cursors.items():
        parent = by_pid.get(gone.ppid)
        if key not in live and parent is not None and parent.start_ticks <= key[1]:
            reaped[parent.key].append(((gone.user, gone.job), gone.cpu_ticks + gone.child_ticks))

    cursors: dict[tuple[int, int], Cursor] = {}
    for p in procs:
        job: JobKey = (p.identity.user, p.identity.job)
        cur = state.cursors.get(p.key)
        if cur is not None:
            base_cpu, base_child = cur.cpu_ticks, cur.child_ticks
        elif p.start_ticks / CLOCK_TICKS >= state.last_uptime:
            base_cpu = base_child = 0  # started since the last cycle: all of it is new
        else:
            base_cpu, base_child = p.cpu_ticks, p.child_ticks  # older than our records: baseline
        children = max(0, p.child_ticks - base_child)
        credits = reaped.pop(p.key, [])
        state.add_cpu(job, max(0, p.cpu_ticks - base_cpu) / CLOCK_TICKS, now)
        if credits:
            tail = children - sum(total for _, total in credits)
            if tail > 0:
                state.add_cpu(credits[0][0], tail / CLOCK_TICKS, now)
        else:
            state.add_cpu(job, children / CLOCK_TICKS, now)
        cursors[p.key] = Cursor(p.cpu_ticks, p.child_ticks, p.ppid, *job)
    state.cursors = cursors


def gpu_holders(units: Iterable[GpuUnit], procs: list[ProcSample], unbilled_pids: set[int],
                unattributed: dict[int, Unattributed] | None = None) -> list[GpuHolder]:
    """GPU processes with their user and job; unbilled ones have user "" (and the job
    `unattributed-<container>` when their time is counted) and pids NVML reports but /proc
    no longer has (exited in between) are left out."""
    by_pid = {p.pid: p for p in procs}
    holders = []
    for unit in units:
        for gp in unit.processes:
            proc = by_pid.get(gp.pid)
            if proc is not None:
                user, job = proc.identity.user, proc.identity.job
            elif gp.pid in unbilled_pids:
                who = (unattributed or {}).get(gp.pid)
                user, job = "", who.job if who else f"pid-{gp.pid}"
            else:
                continue
            holders.append(GpuHolder(unit, gp.pid, user, job, gp.used_memory_bytes, gp.sm_ratio))
    return holders


def _busy(h: GpuHolder, unit_busy: dict[str, float | None] | None,
          known: float | None = 0.0) -> float | None:
    """`known` plus the process's utilisation (without a per-process figure, MIG or some
    drivers, the unit's own activity); None once any of them is not known."""
    own = h.sm_ratio if h.sm_ratio is not None else (unit_busy or {}).get(h.unit.uuid)
    return None if own is None or known is None else known + own


def account_gpu(state: UsageState, holders: list[GpuHolder], seconds: float, policy: str,
                now: float, idle: IdleSettings | None = None,
                unit_busy: dict[str, float | None] | None = None,
                unattributed: dict[str, Unattributed] | None = None) -> set[GpuKey]:
    """Share each unit's `seconds` among its jobs; with `idle`, count what is idle-holding.
    The shares of unattributed jobs (`unattributed`, by job) are counted apart.
    Returns the keys idle-holding now (`end_streaks` ends the others' streaks)."""
    by_unit: dict[str, list[GpuHolder]] = defaultdict(list)
    for holder in holders:
        by_unit[holder.unit.uuid].append(holder)
    idle_keys = set()
    for unit_holders in by_unit.values():
        unit = unit_holders[0].unit
        memory: dict[JobKey, int] = defaultdict(int)
        busy: dict[JobKey, float | None] = defaultdict(float)
        for h in unit_holders:
            memory[(h.user, h.job)] += h.used_memory_bytes or 0
            busy[(h.user, h.job)] = _busy(h, unit_busy, busy[(h.user, h.job)])
        total = sum(memory.values())
        for (user, job), used in memory.items():
            if policy == "full":
                share = 1.0
            elif policy == "memory" and total > 0:
                share = used / total
            else:
                share = 1.0 / len(memory)
            nobody = (unattributed or {}).get(job) if not user else None
            if nobody is not None:
                state.add_unattributed((nobody.container, nobody.image, unit.label,
                                        unit.model), seconds * share, now)
            if user:
                key = (user, job, unit.label, unit.uuid, unit.model)
                state.add_gpu(key, seconds * share, now)
                ratio = busy[(user, job)]
                if (idle is not None and used >= idle.min_memory_bytes and ratio is not None
                        and ratio < idle.max_utilization_ratio):
                    idle_keys.add(key)
                    _idle_streak(state, key, seconds * share, seconds, now, idle.after_seconds)
    return idle_keys


def end_streaks(state: UsageState, idle_now: set[GpuKey]) -> None:
    for key in [k for k in state.streaks if k not in idle_now]:
        del state.streaks[key]  # busy again, or gone from the GPU: the streak is over


def _idle_streak(state: UsageState, key: GpuKey, billed: float, elapsed: float, now: float,
                 after: float) -> None:
    """Idle seconds are counted once the streak has lasted `after`, from its start: all the
    GPU seconds billed to the job on that GPU meanwhile."""
    streak = state.streaks.get(key)
    if streak is None:
        # It began at the previous sample: this cycle's share is already idle time.
        streak = state.streaks[key] = Streak(since=now - elapsed)
    streak.pending += billed
    if now - streak.since >= after:
        state.add_idle(key, streak.pending, now)
        streak.pending = 0.0


Reserved = dict[int, tuple[str, int]]  # GPU index -> (holder, reservation id)


def gpu_index(unit: GpuUnit) -> int:
    return int(unit.label.split("/")[0])


def account_reserved(state: UsageState, devices: Iterable[GpuDevice], reserved: Reserved,
                     seconds: float, now: float, idle: IdleSettings | None = None,
                     holders: Iterable[GpuHolder] = (),
                     unit_busy: dict[str, float | None] | None = None) -> set[GpuKey]:
    """Bill each reserved GPU whole to its holder. With `idle`, a reserved GPU that none of
    the holder's processes keep busy (none at all, or all under the utilisation) is
    idle-holding, whatever memory they hold. Returns the keys idle-holding now."""
    use: dict[int, float | None] = {}
    for h in holders:
        index = gpu_index(h.unit)
        if index in reserved and h.user == reserved[index][0]:
            use[index] = _busy(h, unit_busy, use.get(index, 0.0))
    idle_keys = set()
    for d in devices:
        if d.index in reserved and not d.lost:
            user, id = reserved[d.index]
            job = RESERVATION_JOB.format(id=id)
            key = (user, job, str(d.index), d.uuid, d.model)
            state.add_gpu(key, seconds, now)
            state.jobs[(user, job)] = JobInfo("reservation", "reservation", now)
            ratio = use.get(d.index, 0.0)
            if idle is not None and ratio is not None and ratio < idle.max_utilization_ratio:
                idle_keys.add(key)
                _idle_streak(state, key, seconds, seconds, now, idle.after_seconds)
    return idle_keys


def account_energy(state: UsageState, devices: Iterable[GpuDevice], holders: list[GpuHolder],
                   reserved: Reserved, seconds: float, now: float,
                   counters: dict[str, float]) -> None:
    """Each GPU's energy since the last cycle (its own counter's growth, else its power times
    the seconds) shared among the jobs on it in proportion to their processes' SM activity,
    equally where that is not known; a reserved GPU's goes to its holder's reservation. The
    shares of processes nobody is billed for are left out. `counters`: each GPU's last
    counter reading, by uuid (updated)."""
    on: dict[int, list[GpuHolder]] = defaultdict(list)
    for h in holders:
        on[gpu_index(h.unit)].append(h)
    for d in devices:
        if d.lost:
            continue
        joules = None
        if d.energy_joules_total is not None:
            before = counters.get(d.uuid)
            counters[d.uuid] = d.energy_joules_total
            if before is not None and d.energy_joules_total >= before:
                joules = d.energy_joules_total - before
        if joules is None and d.power_watts is not None:  # no counter, or it began again
            joules = d.power_watts * seconds
        if not joules:
            continue
        if d.index in reserved:
            user, id = reserved[d.index]
            state.add_energy((user, RESERVATION_JOB.format(id=id), str(d.index), d.uuid,
                              d.model), joules, now)
            continue
        mine = on.get(d.index, [])
        weights = [h.sm_ratio or 0.0 for h in mine]
        if any(h.sm_ratio is None for h in mine) or not sum(weights):
            weights = [1.0] * len(mine)
        total = sum(weights)
        for h, weight in zip(mine, weights, strict=True):
            if h.user and weight:
                state.add_energy((h.user, h.job, h.unit.label, h.unit.uuid, h.unit.model),
                                 joules * weight / total, now)


def update_jobs(state: UsageState, procs: list[ProcSample], now: float,
                boot_time: float) -> None:
    """Describe each live job by its earliest non-shell process (name, script, arguments,
    directory), with the framework any of its processes showed, and mark it seen. What a job
    was once found to be (its framework, its start) it stays."""
    best: dict[JobKey, ProcSample] = {}
    frameworks: dict[JobKey, str] = {}
    first: dict[JobKey, int] = {}
    for p in procs:
        key = (p.identity.user, p.identity.job)
        known = best.get(key)
        rank = (p.identity.is_shell, p.start_ticks)
        if known is None or rank < (known.identity.is_shell, known.start_ticks):
            best[key] = p
        if p.framework and not frameworks.get(key):
            frameworks[key] = p.framework
        first[key] = min(first.get(key, p.start_ticks), p.start_ticks)
    for key, p in best.items():
        old = state.jobs.get(key)
        started = float(round(boot_time + first[key] / CLOCK_TICKS))
        who = p.identity
        state.jobs[key] = JobInfo(
            who.name, who.job_source, now,
            framework=(old.framework if old else "") or frameworks.get(key, ""),
            script=who.script, args=who.args, cwd=who.cwd,
            started=min(old.started, started) if old and old.started else started)
