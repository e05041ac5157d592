"""Job ids come from users (`GPUACCT_JOB`, `JOB_ID`): a test user starting 1,000 processes
with distinct ids, one with a 20 kB id and a busy one among them cannot raise the exporter's
series past exporter.max_jobs_per_user, nor write a line of 20 kB; the exposition stays
lint-clean, and the CPU time of the folded jobs is all there, on `overflow`."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.usage.jobs import bounded
from exporter.usage.overflow import JobCap
from exporter.usage.procs import ProcIdentity, ProcSample
from tests.fixtures.exporter import Exporter, promtool_check_metrics
from tests.fixtures.users import SCRIPTS, Processes, UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]
CAP = 64
SPAWN = """
for i in $(seq 1000); do GPUACCT_JOB=job-$i sleep 300 & done
GPUACCT_JOB=$(printf 'x%.0s' $(seq 20000)) sleep 300 &
GPUACCT_JOB=the-busy-one /usr/bin/python3 {busy} 300 &
wait
"""
SERIES = re.compile(r'^gpuacct_job_cpu_seconds_total\{job="([^"]*)",user="([^"]+)"\} (\S+)$',
                    re.M)


def cpu_of(text: str, user: str) -> dict[str, float]:
    return {job: float(v) for job, u, v in SERIES.findall(text) if u == user}


def proc_cpu_seconds(uid: int) -> float:
    """utime + stime of every process of `uid` now, from /proc."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nUid:\t{uid}\t" not in status.read_text():
                continue
            fields = (status.parent / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / 100


def test_a_user_cannot_blow_up_the_series(
        start_exporter: Callable[..., Exporter], tmp_path: Path, processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    erin = test_users["erin"]
    exporter = start_exporter({"exporter": {"interval_seconds": 0.25,
                                            "state_file": str(tmp_path / "state.json"),
                                            "nvml": {"backend": "off"}}})
    processes.run(erin, ["/bin/bash", "-c", SPAWN.format(busy=SCRIPTS / "train.py")])
    deadline = time.monotonic() + 60
    while True:
        text = exporter.scrape()
        folded = re.search(rf'^gpuacct_jobs_folded\{{user="{erin.name}"\}} (\S+)$', text, re.M)
        if folded and float(folded.group(1)) >= 1002 + 1 - CAP:  # + the bash session's job
            break
        assert time.monotonic() < deadline, "the exporter never saw erin's 1,002 jobs"
        time.sleep(0.25)

    jobs = cpu_of(text, erin.name)
    assert len(jobs) <= CAP + 1 and "overflow" in jobs, [
        line for line in text.splitlines() if "cpu_seconds" in line][:10]
    info = re.findall(r'^gpuacct_job_info\{.*?\bjob="([^"]*)",.*user="([^"]+)"\}', text, re.M)
    assert 0 < len({j for j, u in info if u == erin.name}) <= CAP + 1
    assert max(len(line) for line in text.splitlines()) < 400
    lint = promtool_check_metrics(text)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # Nothing lost: what erin's processes used is what the exporter counts (within a cycle).
    time.sleep(2)
    counted = sum(cpu_of(exporter.scrape(), erin.name).values())
    used = proc_cpu_seconds(erin.uid)
    assert used > 1.0 and abs(counted - used) < 0.6, (counted, used)
    log = next(tmp_path.glob("exporter*.log")).read_text()
    assert "a job id or name too long or with odd characters is shown as" in log
    assert "x" * 200 not in log  # the 20 kB id is named by its cut form, not written out


def sample(user: str, job: str, start: int) -> ProcSample:
    return ProcSample(pid=start, start_ticks=start, ppid=1, cpu_ticks=0, child_ticks=0,
                      rss_bytes=0, identity=ProcIdentity(1000, user, job, "env", job, False))


def test_which_jobs_keep_their_id_is_stable() -> None:
    cap = JobCap(3)
    first = cap.fold([sample("a", f"j{i}", i) for i in range(5)] + [sample("b", "x", 9)])
    assert [p.identity.job for p in first] == ["j0", "j1", "j2", "overflow", "overflow", "x"]
    assert cap.folded == {"a": 2}
    # j1 ends and a new one starts: the new one takes the slot; the folded stay folded.
    second = cap.fold([sample("a", j, i) for i, j in ((0, "j0"), (2, "j2"), (3, "j3"),
                                                      (4, "j4"), (5, "j5"))])
    assert [p.identity.job for p in second] == ["j0", "j2", "overflow", "overflow", "j5"]
    counts: dict[str, int] = defaultdict(int)
    for p in second:
        counts[p.identity.job] += 1
    assert len(counts) == 4


def test_job_ids_are_bounded_and_stay_apart() -> None:
    short, cut = bounded("train-42", 128)
    assert (short, cut) == ("train-42", False)
    long_a, cut = bounded("x" * 20_000, 128)
    long_b, _ = bounded("x" * 19_999, 128)
    assert cut and len(long_a) <= 128 and long_a != long_b
    odd, cut = bounded('a"b\nc{d}', 128)
    assert cut and re.fullmatch(r"[A-Za-z0-9_.:@+=/~ -]+", odd)
