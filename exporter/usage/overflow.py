"""At most `max_jobs_per_user` jobs per user on a node keep their own id: the user's jobs
beyond it share one job, `overflow`, so that no user can make thousands of series (and usage
lines a minute) out of thousands of job ids. Nothing is lost: their time is counted, to
`overflow`.

Which jobs keep their own id is stable: a job that had one keeps it while it lives, a job
folded stays folded while it lives; new jobs get the slots that ended jobs leave.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from exporter.usage.procs import ProcSample

OVERFLOW_JOB = "overflow"
JobKey = tuple[str, str]


class JobCap:
    def __init__(self, max_jobs_per_user: int) -> None:
        self.cap = max_jobs_per_user
        self._kept: set[JobKey] = set()
        self._folded: set[JobKey] = set()
        self.folded: dict[str, int] = {}  # user -> how many of their jobs are folded now

    def fold(self, procs: list[ProcSample]) -> list[ProcSample]:
        """The processes, those of folded jobs with the job `overflow`."""
        first: dict[JobKey, int] = {}
        for p in procs:
            key = (p.identity.user, p.identity.job)
            first[key] = min(first.get(key, p.start_ticks), p.start_ticks)
        self._kept &= first.keys()
        self._folded &= first.keys()
        jobs: dict[str, list[JobKey]] = defaultdict(list)
        for key in first:
            if key not in self._folded:
                jobs[key[0]].append(key)
        for keys in jobs.values():
            # Those that have their own id first (never more than the cap), then the oldest.
            keys.sort(key=lambda k: (k not in self._kept, first[k], k[1]))
            self._kept.update(keys[:self.cap])
            self._folded.update(keys[self.cap:])
        self.folded = dict(sorted(_count(self._folded).items()))
        if not self._folded:
            return procs
        return [dataclasses.replace(p, identity=dataclasses.replace(
                    p.identity, job=OVERFLOW_JOB, job_source="overflow", name=OVERFLOW_JOB))
                if (p.identity.user, p.identity.job) in self._folded else p for p in procs]


def _count(keys: set[JobKey]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for user, _ in keys:
        counts[user] += 1
    return counts
