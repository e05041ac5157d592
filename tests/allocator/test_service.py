"""The allocator service on its SQLite store, with a clock the test moves: grants, the queue
with positions and estimates, release, backfill, limits and refusals, expiry and its notice,
an administrator's cancel, the audit of each step, and a restart that keeps everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.service import AllocationError, Allocator, NotFound
from allocator.store import AllocationStore
from gpuacct.allocation import Reserve
from gpuacct.config import AllocationLimits, AllocatorSettings
from gpuacct.policy import NodeGpu
from gpuacct.store import Target

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def gpus(n: int, model: str = "NVIDIA A100") -> tuple[NodeGpu, ...]:
    return tuple(NodeGpu(index=i, model=model) for i in range(n))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(path: Target, clock: Clock, **settings: object) -> Allocator:
    allocator = Allocator(AllocationStore(path), AllocatorSettings(**settings),
                          clock=clock)
    allocator.report_gpus("gpu01", gpus(2))
    allocator.report_gpus("gpu02", gpus(2, "RTX 3090"))
    return allocator


@pytest.fixture
def allocator(store_target: Target, clock: Clock) -> Allocator:
    return make(store_target, clock)


def ask(count: int, hours: float = 1, **kw: object) -> Reserve:
    return Reserve(count=count, seconds=hours * HOUR, **kw)


def test_grant_queue_release_and_the_next_is_granted(allocator: Allocator,
                                                     clock: Clock) -> None:
    granted = allocator.reserve("alice", "gpu01", ask(2, model="A100"))
    assert granted.request and granted.request.state == "granted"
    assert granted.request.granted_gpus == (0, 1) and granted.request.granted_node == "gpu01"
    assert "GPU 0,1 on gpu01" in granted.text and "gpuacct run" in granted.text
    allocator.reserve("bob", "gpu02", ask(2, 2))  # the RTX node, for two hours
    carol = allocator.reserve("carol", "gpu01", ask(2))
    dave = allocator.reserve("dave", "gpu01", ask(2))
    assert carol.request and carol.request.state == "queued"
    assert "position 1" in carol.text and "in 1h 00m" in carol.text
    assert "position 2" in dave.text and "in 2h 00m" in dave.text
    summary = allocator.summary()
    assert [(e.user, e.position) for e in summary.entries] == [
        ("alice", None), ("bob", None), ("carol", 1), ("dave", 2)]

    clock.now += 60
    version = allocator.version
    [released] = allocator.release("alice", None)
    assert "released" in released.text
    assert allocator.version > version
    states = {e.user: (e.state, e.node, e.position) for e in allocator.summary().entries}
    assert states["carol"] == ("granted", "gpu01", None) and states["dave"][2] == 1
    [notice] = [n for n in allocator.desired().notices if n.user == "carol"]
    assert "granted" in notice.text and notice.nodes == ("gpu01",)
    reserved = allocator.desired().nodes["gpu01"]
    assert {(r.gpu, r.user) for r in reserved} == {(0, "carol"), (1, "carol")}
    events = [(e.user, e.event) for e in allocator.store.audit()]
    assert ("alice", "released") in events and ("carol", "granted") in events


def test_a_small_request_backfills_only_where_it_cannot_delay_the_head(
        allocator: Allocator) -> None:
    allocator.reserve("alice", "gpu01", ask(1, 3, node="gpu01"))  # GPU 0 for 3 hours
    allocator.reserve("bob", "gpu02", ask(2, 3, node="gpu02"))
    carol = allocator.reserve("carol", "gpu01", ask(2, 1, node="gpu01"))  # waits for GPU 0
    assert carol.request and carol.request.state == "queued"
    short = allocator.reserve("erin", "gpu01", ask(1, 2, node="gpu01"))  # done before carol
    assert short.request and short.request.state == "granted"
    long = allocator.reserve("frank", "gpu01", ask(1, 4, node="gpu01"))
    assert long.request and long.request.state == "queued"
    [entry] = [e for e in allocator.summary().entries if e.user == "carol"]
    assert entry.estimated_start == pytest.approx(allocator.clock() + 3 * HOUR)


def test_refusals_name_the_problem_and_queue_nothing(tmp_path: Path, clock: Clock) -> None:
    allocator = make(tmp_path / "a.sqlite3", clock, max_gpus=3, max_seconds=8 * HOUR,
                     user_limits={"bob": AllocationLimits(max_gpus=1)})
    allocator.__dict__["restriction"] = lambda user: "blocked (out of money)" \
        if user == "mallory" else None
    cases = [
        ("alice", ask(3), "at most 2 match on any one node"),
        ("alice", ask(1, model="H100"), "no GPU matches the model 'H100'"),
        ("alice", ask(1, node="gpu09"), "no node is called 'gpu09'"),
        ("alice", ask(1, gpus=(5,)), "gpu01 has no GPU 5"),
        ("alice", ask(1, 9), "longer than the longest reservation allowed (8h 00m)"),
        ("bob", ask(2), "your limit is 1"),
        ("mallory", ask(1), "no new GPUs while blocked (out of money)"),
    ]
    for user, request, message in cases:
        with pytest.raises(AllocationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            allocator.reserve(user, "gpu01", request)
    assert allocator.summary().entries == ()
    allocator.reserve("alice", "gpu01", ask(2))
    with pytest.raises(AllocationError, match="would make 4 held or queued; your limit is 3"):
        allocator.reserve("alice", "gpu01", ask(2))


def test_nobody_releases_anothers_request(allocator: Allocator) -> None:
    mine = allocator.reserve("alice", "gpu01", ask(1)).request
    assert mine is not None
    with pytest.raises(NotFound):
        allocator.release("bob", mine.id)
    with pytest.raises(NotFound):
        allocator.release("bob", None)
    assert [e.user for e in allocator.summary().entries] == ["alice"]
    assert [e.user for e in allocator.summary("bob").entries] == []


def test_expiry_is_announced_then_ends_the_reservation(allocator: Allocator,
                                                       clock: Clock) -> None:
    r = allocator.reserve("alice", "gpu01", ask(1)).request
    assert r is not None
    clock.now += HOUR - 500  # inside the 10 minutes' notice
    allocator.tick()
    allocator.tick()  # told once
    notices = [n.text for n in allocator.desired().notices]
    assert len(notices) == 1 and "ends at" in notices[0]
    clock.now += 600
    allocator.tick()
    assert allocator.summary().entries == ()
    assert "has expired" in allocator.desired().notices[-1].text
    events = [e.event for e in allocator.store.audit("alice")]
    assert events == ["queued", "granted", "expiry notice", "expired"]
    clock.now += 2 * HOUR
    allocator.tick()
    assert allocator.desired().notices == ()  # old notices are not sent for ever


def test_an_administrator_cancels_and_the_user_is_told(allocator: Allocator) -> None:
    r = allocator.reserve("alice", "gpu01", ask(1)).request
    assert r is not None
    outcome = allocator.cancel(r.id, "admin-ann", "maintenance")
    assert "cancelled" in outcome.text
    [notice] = allocator.desired().notices
    assert notice.user == "alice" and "cancelled by admin-ann (maintenance)" in notice.text
    assert allocator.store.audit("alice")[-1].actor == "admin-ann"
    with pytest.raises(NotFound):
        allocator.cancel(r.id, "admin-ann")


def test_a_restart_keeps_the_queue_and_the_reservations(store_target: Target,
                                                         clock: Clock) -> None:
    path = store_target
    first = make(path, clock)
    for user in ("alice", "bob", "carol", "dave"):
        first.reserve(user, "gpu01", ask(2))
    before = first.summary()
    version = first.version
    first.store.close()
    again = make(path, clock)
    assert again.summary() == before
    assert again.version == version  # nothing changed: nodes are not sent it again


def test_an_unused_reservation_is_announced_then_released(allocator: Allocator,
                                                         clock: Clock) -> None:
    r = allocator.reserve("alice", "gpu01", ask(1, 8)).request
    assert r is not None
    allocator.tick()
    assert allocator.summary().entries  # no report from the node yet: never idle
    allocator.report_use({r.id: clock.now})
    clock.now += 1000  # past half of the 30 minutes
    allocator.tick()
    allocator.tick()
    [notice] = allocator.desired().notices
    assert "has not been used for 16m" in notice.text and "released in 13m" in notice.text
    clock.now += 400
    allocator.report_use({r.id: clock.now - 100})  # she used it: the clock starts again
    allocator.tick()
    assert allocator.summary().entries
    clock.now += 1800
    allocator.tick()
    assert allocator.summary().entries == ()
    assert "none of your processes used it (unused for 31m)" in allocator.desired().notices[-1].text
    assert [e.event for e in allocator.store.audit("alice")][-2:] == ["idle notice", "idle"]


def test_a_node_ends_only_its_own_reservations_held_idle(allocator: Allocator) -> None:
    alice = allocator.reserve("alice", "gpu01", ask(1, node="gpu01")).request
    bob = allocator.reserve("bob", "gpu02", ask(1, node="gpu02")).request
    queued = allocator.reserve("carol", "gpu01", ask(2, node="gpu01")).request
    assert alice and bob and queued and queued.state == "queued"
    allocator.release_idle("gpu01", (bob.id, queued.id, 999))  # not gpu01's reservations
    assert {e.id for e in allocator.summary().entries} == {alice.id, bob.id, queued.id}
    allocator.release_idle("gpu01", (alice.id,))
    states = {e.id: e.state for e in allocator.summary().entries}
    assert states == {bob.id: "granted", queued.id: "granted"}
    [notice] = [n for n in allocator.desired().notices if n.user == "alice"]
    assert "was released: your processes held its GPUs idle" in notice.text
    last = allocator.store.audit("alice")[-1]
    assert (last.request, last.event, last.actor) == (alice.id, "idle-held", "node gpu01")
