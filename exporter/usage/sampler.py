"""The sampler: at a fixed interval, read GPUs and processes, update the counters, persist them,
and publish an immutable snapshot that /metrics renders (so scrapes never change anything)."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from exporter.containers.owners import ContainerOwners
from exporter.devices.base import GpuReading
from exporter.devices.node import Devices
from exporter.usage.accounting import (
    GpuHolder,
    Reserved,
    account_cpu,
    account_energy,
    account_gpu,
    account_reserved,
    end_streaks,
    gpu_holders,
    gpu_index,
    update_jobs,
)
from exporter.usage.counters import (
    Counter,
    GpuKey,
    JobInfo,
    JobKey,
    UnattributedKey,
    UsageState,
    load_state,
    save_state,
)
from exporter.usage.overflow import JobCap
from exporter.usage.procs import ProcessTable, ProcSample, Unattributed, uptime_seconds
from gpuacct.config import ExporterSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    taken_at: float = 0.0
    duration_seconds: float = 0.0
    gpu_seconds: dict[GpuKey, Counter] = field(default_factory=dict)
    gpu_idle_seconds: dict[GpuKey, Counter] = field(default_factory=dict)  # within gpu_seconds
    gpu_energy_joules: dict[GpuKey, Counter] = field(default_factory=dict)
    # Since when each job is idle-holding a GPU: its streak's start plus idle.after_seconds.
    idle_since: dict[GpuKey, float] = field(default_factory=dict)
    cpu_seconds: dict[JobKey, Counter] = field(default_factory=dict)
    jobs: dict[JobKey, JobInfo] = field(default_factory=dict)
    job_memory_bytes: dict[JobKey, int] = field(default_factory=dict)
    job_processes: dict[JobKey, int] = field(default_factory=dict)
    holders: tuple[GpuHolder, ...] = ()
    procs: tuple[ProcSample, ...] = ()  # billable processes, for the actuator
    folded_jobs: dict[str, int] = field(default_factory=dict)  # user -> jobs in `overflow`
    gpus: GpuReading | None = None
    xid_errors: dict[tuple[int, str, int], Counter] = field(default_factory=dict)
    collectors: dict[str, tuple[bool, float]] = field(default_factory=dict)
    unattributed_seconds: dict[UnattributedKey, Counter] = field(default_factory=dict)
    # The GPU processes nobody is billed for whose time is counted, by pid (for the actuator).
    unattributed: dict[int, Unattributed] = field(default_factory=dict)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Sampler:
    def __init__(self, settings: ExporterSettings, gpus: Devices | None,
                 proc_root: str = "/proc") -> None:
        self.settings = settings
        self.gpus = gpus
        self.table = ProcessTable(settings.min_uid, list(settings.job_sources),
                                  list(settings.job_env_vars), proc_root,
                                  settings.max_job_id_length, settings.only_users,
                                  ContainerOwners(settings.containers, settings.min_uid))
        self.cap = JobCap(settings.max_jobs_per_user)
        self.proc_root = proc_root
        # No state yet: what runs now predates us and is only baselined.
        self.state = load_state(settings.state_file) or UsageState(
            last_sample=time.time(), last_uptime=uptime_seconds(proc_root), boot_id=_boot_id())
        if self.state.boot_id != _boot_id():
            # Rebooted: pids and ticks of the old boot mean nothing, and every process now
            # started after our last sample, so all of its time is new.
            self.state.cursors = {}
            self.state.last_uptime = 0.0
            self.state.boot_id = _boot_id()
        self.snapshot = Snapshot()
        self._last_mono: float | None = None
        self._xids: dict[tuple[int, str, int], Counter] = {}
        self._energy_counters: dict[str, float] = {}  # each GPU's last energy reading
        self._scrapes_lock = threading.Lock()
        # The GPUs of this node reserved now, and for whom (set by the node's actuator).
        self.reserved: Callable[[], Reserved] = dict

    @property
    def last_cycle(self) -> float | None:
        """When the last cycle read the node (time.monotonic()); None before the first."""
        return self._last_mono

    def scraped(self, environ: dict[str, Any]) -> None:
        """A Prometheus scrape of /metrics: who (its `scraper` parameter, else its address)
        and when. Other requests (a curl by hand) are not scrapers to wait for."""
        if "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS" not in environ:
            return
        query = parse_qs(environ.get("QUERY_STRING", ""))
        who = (query.get("scraper") or [""])[0][:64] or environ.get("REMOTE_ADDR", "?")
        with self._scrapes_lock:
            self.state.scraped(who, time.time())

    def cycle(self) -> Snapshot:
        started, now, mono = time.perf_counter(), time.time(), time.monotonic()
        collectors: dict[str, tuple[bool, float]] = {}

        reading: GpuReading | None = None
        if self.gpus is not None:
            reading, collectors = self.gpus.read()

        t = time.perf_counter()
        uptime = uptime_seconds(self.proc_root)
        # After NVML, so a pid NVML saw and /proc lost is just absent.
        procs = self.cap.fold(self.table.scan())
        collectors["proc"] = (True, time.perf_counter() - t)

        units = [u for d in (reading.devices if reading else ()) for u in d.units]
        nobody = self.table.unattributed
        holders = gpu_holders(units, procs, self.table.unbilled_pids, nobody)
        elapsed = mono - self._last_mono if self._last_mono is not None else 0.0
        self._last_mono = mono

        state = self.state
        reserved = self.reserved()
        account_cpu(state, procs, now)
        # Each unit's own activity: a MIG instance's from GPM, a whole GPU's from its device.
        busy = {u.uuid: u.utilization_ratio if u.utilization_ratio is not None
                else d.utilization_ratio for d in (reading.devices if reading else ())
                for u in d.units}
        idle = self.settings.idle
        idle_now = account_gpu(state, [h for h in holders if gpu_index(h.unit) not in reserved],
                               elapsed, self.settings.gpu_share, now, idle, busy,
                               {who.job: who for who in nobody.values()})
        update_jobs(state, procs, now, boot_time=now - uptime)
        idle_now |= account_reserved(state, reading.devices if reading else (), reserved,
                                     elapsed, now, idle, holders, busy)
        account_energy(state, reading.devices if reading else (), holders, reserved, elapsed,
                       now, self._energy_counters)
        end_streaks(state, idle_now)
        with self._scrapes_lock:
            state.expire(now, self.settings.retention_seconds,
                         self.settings.max_retention_seconds,
                         settle=2 * self.settings.interval_seconds)
        state.last_sample, state.last_uptime = now, uptime
        self._count_xids(reading, now)

        t = time.perf_counter()
        try:
            save_state(self.settings.state_file, state)
            collectors["state"] = (True, time.perf_counter() - t)
        except OSError as exc:
            log.error("cannot save state to %s: %s", self.settings.state_file, exc)
            collectors["state"] = (False, time.perf_counter() - t)

        memory: dict[JobKey, int] = defaultdict(int)
        count: dict[JobKey, int] = defaultdict(int)
        for p in procs:
            memory[(p.identity.user, p.identity.job)] += p.rss_bytes
            count[(p.identity.user, p.identity.job)] += 1
        self.snapshot = Snapshot(
            taken_at=now,
            duration_seconds=time.perf_counter() - started,
            gpu_seconds={k: Counter(c.value, c.created) for k, c in state.gpu.items()},
            gpu_idle_seconds={k: Counter(c.value, c.created) for k, c in state.idle.items()},
            gpu_energy_joules={k: Counter(c.value, c.created) for k, c in state.energy.items()},
            idle_since={k: s.since + self.settings.idle.after_seconds
                        for k, s in state.streaks.items() if self.settings.idle
                        and now - s.since >= self.settings.idle.after_seconds},
            cpu_seconds={k: Counter(c.value, c.created) for k, c in state.cpu.items()},
            jobs=dict(state.jobs),
            job_memory_bytes=dict(memory),
            job_processes=dict(count),
            holders=tuple(h for h in holders if h.user),
            procs=tuple(procs),
            gpus=reading,
            xid_errors={k: Counter(c.value, c.created) for k, c in self._xids.items()},
            collectors=collectors,
            folded_jobs=self.cap.folded,
            unattributed_seconds={k: Counter(c.value, c.created)
                                  for k, c in state.unattributed.items()},
            unattributed={h.pid: nobody[h.pid] for h in holders if h.pid in nobody},
        )
        return self.snapshot

    def _count_xids(self, reading: GpuReading | None, now: float) -> None:
        for device in reading.devices if reading else ():
            for xid in device.xid_errors:
                key = (device.index, device.uuid, xid)
                self._xids.setdefault(key, Counter(0.0, now)).value += 1

    def run(self, stop: threading.Event,
            after: Callable[[Snapshot], None] | None = None) -> None:
        """Cycle at a fixed rate until `stop` is set; a slow cycle skips, never bunches up.
        `after` (the actuator) sees every snapshot as soon as it is taken."""
        interval = self.settings.interval_seconds
        deadline = time.monotonic()
        while True:
            deadline += interval
            now = time.monotonic()
            if deadline < now:
                deadline = now + interval - (now - deadline) % interval
            if stop.wait(deadline - now):
                return
            try:
                snapshot = self.cycle()
            except Exception:
                log.exception("sampling cycle failed")
                continue
            if after is not None:
                try:
                    after(snapshot)
                except Exception:
                    log.exception("enforcement after the sampling cycle failed")
