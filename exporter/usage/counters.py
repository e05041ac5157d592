"""The billing counters and their persistence: values only ever grow, and survive restarts.

The state file is rewritten atomically (temp file, fsync, rename) after every sampling cycle, so
`kill -9` loses at most one cycle's increments.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NotRequired, cast

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import TypedDict  # pydantic needs it for a TypedDict before 3.12

from gpuacct.files import write_atomically

log = logging.getLogger(__name__)

JobKey = tuple[str, str]  # user, job
GpuKey = tuple[str, str, str, str, str]  # user, job, gpu, gpu_uuid, gpu_model
UnattributedKey = tuple[str, str, str, str]  # container, image, gpu, gpu_model
STATE_VERSION: Literal[1] = 1


@dataclass
class Counter:
    value: float
    created: float  # unix time the series began: Prometheus' `_created`


@dataclass
class JobInfo:
    name: str
    source: str
    last_seen: float  # unix time the job last had a live process
    framework: str = ""  # torch, tensorflow, jax, mindspore, paddle; "" when none was seen
    script: str = ""
    args: str = ""  # secrets redacted
    cwd: str = ""
    started: float = 0.0  # unix time its earliest process started


@dataclass
class Cursor:
    """How much CPU time of one live process has already been counted."""

    cpu_ticks: int
    child_ticks: int
    ppid: int
    user: str
    job: str


@dataclass
class Streak:
    """A job idle on a GPU since `since` (wall time), with the GPU seconds billed to it since:
    counted as idle once the streak is long enough."""

    since: float
    pending: float = 0.0


@dataclass
class UsageState:
    gpu: dict[GpuKey, Counter] = field(default_factory=dict)
    idle: dict[GpuKey, Counter] = field(default_factory=dict)  # a subset of `gpu`
    energy: dict[GpuKey, Counter] = field(default_factory=dict)  # joules, per job and GPU
    streaks: dict[GpuKey, Streak] = field(default_factory=dict)
    cpu: dict[JobKey, Counter] = field(default_factory=dict)
    jobs: dict[JobKey, JobInfo] = field(default_factory=dict)
    cursors: dict[tuple[int, int], Cursor] = field(default_factory=dict)
    last_sample: float = 0.0  # unix time of the last cycle
    # Seconds since boot when the last scan began: a process that started later is new and
    # all its CPU time counts; one that started earlier but was never seen is only baselined.
    last_uptime: float = 0.0
    boot_id: str = ""
    # Who scrapes this exporter (a Prometheus replica's `scraper` parameter, else its
    # address) and when it last did: a finished job stays until each has seen its end.
    scrapers: dict[str, float] = field(default_factory=dict)
    # GPU seconds of root and of containers nobody could be found for, and when each was
    # last added to (it is forgotten as a finished job is).
    unattributed: dict[UnattributedKey, Counter] = field(default_factory=dict)
    unattributed_seen: dict[UnattributedKey, float] = field(default_factory=dict)

    def add_gpu(self, key: GpuKey, seconds: float, now: float) -> None:
        self.gpu.setdefault(key, Counter(0.0, now)).value += seconds

    def add_idle(self, key: GpuKey, seconds: float, now: float) -> None:
        self.idle.setdefault(key, Counter(0.0, now)).value += seconds

    def add_energy(self, key: GpuKey, joules: float, now: float) -> None:
        self.energy.setdefault(key, Counter(0.0, now)).value += joules

    def add_cpu(self, key: JobKey, seconds: float, now: float) -> None:
        self.cpu.setdefault(key, Counter(0.0, now)).value += seconds

    def add_unattributed(self, key: UnattributedKey, seconds: float, now: float) -> None:
        self.unattributed.setdefault(key, Counter(0.0, now)).value += seconds
        self.unattributed_seen[key] = now

    def scraped(self, scraper: str, at: float) -> None:
        # A new dict, not a change of the old: the state may be being saved meanwhile.
        self.scrapers = {**self.scrapers, scraper: max(at, self.scrapers.get(scraper, 0.0))}

    def expire(self, now: float, retention: float, longest: float | None = None,
               settle: float = 0.0) -> None:
        """Forget jobs gone longer than the retention once every scraper has scraped them
        `settle` seconds after they ended (by then their last increment is counted), or gone
        longer than `longest` in any case. A scraper not seen for `longest` is forgotten."""
        longest = retention if longest is None else max(longest, retention)
        self.scrapers = {s: t for s, t in self.scrapers.items() if now - t <= longest}
        last_scrape = min(self.scrapers.values(), default=now)

        def ended(last_seen: float) -> bool:
            return now - last_seen > retention and (last_scrape > last_seen + settle
                                                    or now - last_seen > longest)

        gone = {key for key, info in self.jobs.items() if ended(info.last_seen)}
        for unattributed in [k for k, seen in self.unattributed_seen.items() if ended(seen)]:
            del self.unattributed[unattributed], self.unattributed_seen[unattributed]
        for key in gone:
            del self.jobs[key]
            self.cpu.pop(key, None)
        for table in (self.gpu, self.idle, self.streaks, self.energy):
            for gpu_key in [k for k in table if k[:2] in gone]:
                del table[gpu_key]

    def to_file(self) -> CounterFile:
        # Built without validation: this runs every sampling cycle, and the values are ours.
        return CounterFile.model_construct(
            version=STATE_VERSION, last_sample=self.last_sample, last_uptime=self.last_uptime,
            boot_id=self.boot_id,
            gpu=[(*key, c.value, c.created) for key, c in self.gpu.items()],
            idle=[(*key, c.value, c.created) for key, c in self.idle.items()],
            energy=[(*key, c.value, c.created) for key, c in self.energy.items()],
            streaks=[(*key, s.since, s.pending) for key, s in self.streaks.items()],
            cpu=[(*key, c.value, c.created) for key, c in self.cpu.items()],
            jobs=[(*key, cast(JobEntry, asdict(info))) for key, info in self.jobs.items()],
            cursors=[(*key, cast(CursorEntry, asdict(cur))) for key, cur in self.cursors.items()],
            scrapers=self.scrapers,
            unattributed=[(*key, c.value, c.created, self.unattributed_seen.get(key, 0.0))
                          for key, c in self.unattributed.items()])

    @classmethod
    def from_file(cls, data: CounterFile) -> UsageState:
        return cls(
            gpu={(u, j, g, uu, m): Counter(v, c) for u, j, g, uu, m, v, c in data.gpu},
            idle={(u, j, g, uu, m): Counter(v, c) for u, j, g, uu, m, v, c in data.idle},
            energy={(u, j, g, uu, m): Counter(v, c) for u, j, g, uu, m, v, c in data.energy},
            streaks={(u, j, g, uu, m): Streak(s, p) for u, j, g, uu, m, s, p in data.streaks},
            cpu={(u, j): Counter(v, c) for u, j, v, c in data.cpu},
            jobs={(u, j): JobInfo(**info) for u, j, info in data.jobs},
            cursors={(pid, start): Cursor(**cur) for pid, start, cur in data.cursors},
            last_sample=data.last_sample, last_uptime=data.last_uptime, boot_id=data.boot_id,
            scrapers=dict(data.scrapers),
            unattributed={(c, i, g, m): Counter(v, t) for c, i, g, m, v, t, _ in data.unattributed},
            unattributed_seen={(c, i, g, m): seen for c, i, g, m, _, _, seen
                               in data.unattributed})


class JobEntry(TypedDict):
    name: str
    source: str
    last_seen: float
    framework: NotRequired[str]  # absent in files from before
    script: NotRequired[str]
    args: NotRequired[str]
    cwd: NotRequired[str]
    started: NotRequired[float]


class CursorEntry(TypedDict):
    cpu_ticks: int
    child_ticks: int
    ppid: int
    user: str
    job: str


class CounterFile(BaseModel):
    """The state file: compact rows, keys first, so a node with many jobs writes little."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    last_sample: float
    last_uptime: float
    boot_id: str
    gpu: list[tuple[str, str, str, str, str, float, float]]  # key, value, created
    idle: list[tuple[str, str, str, str, str, float, float]] = []  # key, value, created
    energy: list[tuple[str, str, str, str, str, float, float]] = []  # absent in files before
    streaks: list[tuple[str, str, str, str, str, float, float]] = []  # key, since, pending
    cpu: list[tuple[str, str, float, float]]
    jobs: list[tuple[str, str, JobEntry]]
    cursors: list[tuple[int, int, CursorEntry]]
    scrapers: dict[str, float] = {}  # absent in files from before
    # key, value, created, last seen; absent in files from before
    unattributed: list[tuple[str, str, str, str, float, float, float]] = []


def load_state(path: Path) -> UsageState | None:
    """The persisted counters, or None (logged) when there are none or they are unreadable."""
    try:
        return UsageState.from_file(CounterFile.model_validate_json(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        log.error("state file %s unusable (%s); starting counters afresh", path, exc)
        return None


def save_state(path: Path, state: UsageState) -> None:
    write_atomically(path, state.to_file().model_dump_json().encode())
