"""The job store's states, on SQLite and on PostgreSQL: running, finished, lost when the node
goes silent, reconciled when it answers again; filters and pages for the web."""

from __future__ import annotations

from typing import Any

import pytest

from gpuacct.store import Target
from jobstore.store import JobFilter, JobSeen, JobStore, Recorded

T0 = 1_800_000_000.0
LOST_AFTER = 300.0


def seen(job: str, node: str = "gpu1:9835", user: str = "alice", running: bool = True,
         **meta: str) -> JobSeen:
    return JobSeen(node, user, job, started=T0 - 100, running=running, **meta)


def states(store: JobStore, **where: Any) -> dict[str, str]:
    items, _ = store.jobs(JobFilter(**where), per_page=1000)
    return {j.job: j.state for j in items}


@pytest.fixture
def store(store_target: Target) -> JobStore:
    return JobStore(store_target)


def test_running_then_finished_when_its_processes_end_or_it_goes(store: JobStore) -> None:
    store.record(T0, ["gpu1:9835"], [seen("a", framework="torch", args="--token <redacted>"),
                                     seen("b")], LOST_AFTER)
    assert states(store) == {"a": "running", "b": "running"}
    # a: reported without live processes (kept by the exporter for its retention); b: gone
    store.record(T0 + 60, ["gpu1:9835"], [seen("a", running=False)], LOST_AFTER)
    items, total = store.jobs(JobFilter())
    assert total == 2 and {j.job: (j.state, j.ended) for j in items} == {
        "a": ("finished", T0), "b": ("finished", T0)}
    (a,) = [j for j in items if j.job == "a"]
    assert (a.framework, a.args, a.started, a.first_seen) == (
        "torch", "--token <redacted>", T0 - 100, T0)


def test_a_silent_node_loses_its_running_jobs_after_the_configured_time(store: JobStore) -> None:
    store.record(T0, ["gpu1:9835", "gpu2:9835"],
                 [seen("a"), seen("done", running=False), seen("x", node="gpu2:9835")],
                 LOST_AFTER)
    for t in (60, 120, 240, 299):  # gpu1 silent, not yet for long enough
        assert store.record(T0 + t, ["gpu2:9835"], [seen("x", node="gpu2:9835")],
                            LOST_AFTER).lost == 0
    assert states(store) == {"a": "running", "done": "finished", "x": "running"}
    assert store.record(T0 + 300, ["gpu2:9835"], [seen("x", node="gpu2:9835")],
                        LOST_AFTER) == Recorded(lost=1)
    assert states(store) == {"a": "lost", "done": "finished", "x": "running"}
    (a,) = store.jobs(JobFilter(state="lost"))[0]
    assert a.lost_at == T0 + 300 and a.last_seen == T0
    assert store.counts() == {("gpu2:9835", "running"): 1, ("gpu1:9835", "lost"): 1}


@pytest.mark.parametrize("still_running, expected", [(True, "running"), (False, "finished")])
def test_lost_jobs_are_reconciled_when_the_node_answers(store: JobStore, still_running: bool,
                                                        expected: str) -> None:
    store.record(T0, ["gpu1:9835"], [seen("a"), seen("b")], LOST_AFTER)
    store.record(T0 + 400, [], [], LOST_AFTER)
    assert states(store) == {"a": "lost", "b": "lost"}
    # The exporter is back: a is still reported (alive or not), b is not reported at all.
    back = [seen("a", running=still_running)]
    recorded = store.record(T0 + 460, ["gpu1:9835"], back, LOST_AFTER)
    assert recorded.reconciled == 2
    assert states(store) == {"a": expected, "b": "finished"}
    (b,) = store.jobs(JobFilter(state="finished", user="alice"))[0][-1:]
    assert b.ended == T0 and b.lost_at is None  # it ended, at the latest, when last seen


def test_a_job_id_used_again_later_is_another_job(store: JobStore) -> None:
    store.record(T0, ["n"], [JobSeen("n", "alice", "sid-42", T0 - 10)], LOST_AFTER)
    store.record(T0 + 60, ["n"], [JobSeen("n", "alice", "sid-42", T0 + 30)], LOST_AFTER)
    items, total = store.jobs(JobFilter(user="alice"))
    assert total == 2
    assert [(j.started, j.state) for j in items] == [(T0 + 30, "running"), (T0 - 10, "finished")]


def test_filters_and_pages(store: JobStore) -> None:
    store.record(T0, ["n1", "n2"], [seen(f"j{i}", node="n1" if i % 2 else "n2",
                                         user="bob" if i < 3 else "alice") for i in range(7)],
                 LOST_AFTER)
    store.record(T0 + 60, ["n1", "n2"],
                 [seen(f"j{i}", node="n1" if i % 2 else "n2", user="bob" if i < 3 else "alice")
                  for i in range(4, 7)], LOST_AFTER)
    page0, total = store.jobs(JobFilter(user="alice"), page=0, per_page=2)
    page1, _ = store.jobs(JobFilter(user="alice"), page=1, per_page=2)
    assert total == 4 and len(page0) == 2 and len(page1) == 2
    assert {j.job for j in page0 + page1} == {"j3", "j4", "j5", "j6"}
    assert states(store, node="n1", user="alice") == {"j3": "finished", "j5": "running"}
    assert set(states(store, state="running")) == {"j4", "j5", "j6"}
    assert set(states(store, since=T0 + 30)) == {"j4", "j5", "j6"}  # ran after T0 + 30
    assert states(store, until=T0 - 200) == {}  # none had begun by then
    assert store.prune(T0 + 1) == 4 and store.jobs(JobFilter())[1] == 3


def test_metadata_is_updated_and_a_framework_once_found_stays(store: JobStore) -> None:
    store.record(T0, ["n"], [seen("a", node="n", framework="")], LOST_AFTER)
    store.record(T0 + 60, ["n"], [seen("a", node="n", framework="torch")], LOST_AFTER)
    store.record(T0 + 120, ["n"], [seen("a", node="n", framework="")], LOST_AFTER)
    (a,) = store.jobs(JobFilter())[0]
    assert (a.framework, a.last_seen) == ("torch", T0 + 120)


def test_the_web_reads_it_read_only(store: JobStore, store_target: Target) -> None:
    store.record(T0, ["n"], [seen("a", node="n")], LOST_AFTER)
    reader = JobStore(store_target, readonly=True)
    assert states(reader) == {"a": "running"}
    with pytest.raises(Exception, match=r"(?i)read.?only|readonly|query_only"):
        reader.record(T0 + 60, ["n"], [], LOST_AFTER)
