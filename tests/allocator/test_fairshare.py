"""Fair share: the queue's order from each account's decayed usage in the ledger, against its
shares, and the request's age (allocator.fairshare). The properties on any queue (hypothesis):
a request that waited age_max is ahead of every later one, equal users alternate; then the
allocator over a real ledger: the light user is granted first, and when the other has used
more by a half-life later (moved clock), the order flips back."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.fairshare import Usage, decayed, prioritize
from allocator.service import Allocator
from allocator.store import AllocationStore
from enforcer.usage import LedgerUsage
from exporter.users.user_cli import explain
from gpuacct.allocation import Reserve
from gpuacct.config import AllocatorSettings, PrioritySettings, settings_from_mapping
from gpuacct.policy import NodeGpu
from ledger import Ledger
from tests.fixtures.ledger import forge

DAY = 86400.0
PRIORITY = PrioritySettings()


class Asked:
    def __init__(self, id: int, user: str, submitted: float) -> None:
        self.id, self.user, self.submitted = id, user, submitted


def order(queue: list[Asked], now: float, usage: dict[str, float],
          priority: PrioritySettings = PRIORITY) -> list[int]:
    return [r.id for r, _ in prioritize(queue, now, usage, lambda u: u, priority)]


def test_no_usage_is_first_come_first_served() -> None:
    queue = [Asked(1, "hana", 0.0), Asked(2, "lee", 10.0), Asked(3, "kim", 10.0)]
    assert order(queue, 100.0, {}) == [1, 2, 3]


def test_the_heavier_account_waits_and_shares_weigh_in() -> None:
    queue = [Asked(1, "hana", 0.0), Asked(2, "lee", 10.0)]
    assert order(queue, 100.0, {"hana": 90.0, "lee": 10.0}) == [2, 1]
    # hana's account bought nine shares to lee's one: 90% of the usage is her due.
    bought = PrioritySettings(shares={"hana": 9.0})
    [(_, hana), (_, lee)] = prioritize(queue, 100.0, {"hana": 90.0, "lee": 10.0},
                                       lambda u: u, bought)
    assert hana.fairshare == lee.fairshare == 0.5 and order(queue, 100.0, {"hana": 90.0,
                                                                           "lee": 10.0},
                                                            bought) == [1, 2]


def test_usage_halves_every_half_life() -> None:
    assert decayed([(0.0, 8.0)], 2 * DAY, DAY) == 2.0
    assert decayed([(0.0, 8.0), (2 * DAY, 1.0)], 2 * DAY, DAY) == 3.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]),
                          st.floats(0, 3 * DAY)), min_size=2, max_size=12),
       st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 1e6)))
def test_no_one_starves_a_request_that_waited_age_max_passes_every_newer_one(
        asks: list[tuple[str, float]], usage: dict[str, float]) -> None:
    """Whatever the usage: a request that waited age_max is ahead of every request that
    waited less than (1 - fairshare_weight / age_weight) of it, so newcomers never pass it."""
    now = 3 * DAY
    queue = [Asked(i + 1, user, now - waited) for i, (user, waited) in enumerate(asks)]
    ranked = order(queue, now, usage)
    newer = PRIORITY.age_max_seconds * (1 - PRIORITY.fairshare_weight / PRIORITY.age_weight)
    for old in queue:
        if now - old.submitted >= PRIORITY.age_max_seconds:
            for young in queue:
                if now - young.submitted < newer:
                    assert ranked.index(old.id) < ranked.index(young.id)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12), st.floats(0.5, 20))
def test_equal_users_alternate(rounds: int, cost: float) -> None:
    """Two users with a request each always waiting, equal shares: whoever is granted uses a
    GPU for an hour (`cost`), then asks again; grants go back and forth."""
    usage: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    granted, now, next_id = [], 0.0, 3
    queue = [Asked(1, "a", 0.0), Asked(2, "b", 0.0)]
    for _ in range(rounds):
        now += 3600
        current = {u: decayed(p, now, DAY) for u, p in usage.items()}
        [first, *_] = [r for r, _ in prioritize(queue, now, current, lambda u: u, PRIORITY)]
        granted.append(first.user)
        usage[first.user].append((now, cost))
        queue = [r for r in queue if r is not first] + [Asked(next_id, first.user, now)]
        next_id += 1
    assert all(x != y for x, y in itertools.pairwise(granted)), granted


def test_the_light_user_is_granted_first_and_the_order_flips_back_a_half_life_later(
        tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    clock = [t0]
    ledger_path = tmp_path / "ledger.sqlite3"
    Ledger(ledger_path).close()
    usage_at(ledger_path, "hana", t0 - 3600, "100")  # hana used much, an hour ago
    config = settings_from_mapping({"billing": {"ledger": str(ledger_path)},
                                    "allocator": {"check_interval_seconds": 1}}, "test")
    allocator = Allocator(AllocationStore(tmp_path / "allocator.sqlite3"),
                          AllocatorSettings(), clock=lambda: clock[0],
                          usage=LedgerUsage(config))
    allocator.report_gpus("gpu01", (NodeGpu(index=0, model="NVIDIA A100-SXM4-80GB"),))
    hour = Reserve(count=1, seconds=3600)
    week = Reserve(count=1, seconds=PRIORITY.half_life_seconds)
    assert allocator.reserve("ann", "gpu01", week).text.startswith("granted: reservation 1")
    clock[0] += 10
    allocator.reserve("hana", "gpu01", hour)  # first in line by arrival
    clock[0] += 10
    allocator.reserve("lee", "gpu01", hour)
    queued = [(e.id, e.user, e.position) for e in allocator.summary().entries
              if e.state == "queued"]
    assert queued == [(3, "lee", 1), (2, "hana", 2)]
    lines = explain(allocator.summary()).splitlines()
    assert lines[0].split() == ["POS", "ID", "USER", "ACCOUNT", "PRIORITY", "AGE", "FAIRSHARE",
                                "USAGE", "SHARES"]
    assert lines[1].split()[2:] == ["lee", "lee", "5000", "0.000", "1.000", "0.0%", "50.0%"]
    assert lines[2].split()[2:] == ["hana", "hana", "1251", "0.000", "0.250", "100.0%",
                                    "50.0%"]

    # A half-life on, lee has used more meanwhile (120, against hana's 100 now halved): at
    # the allocator's next tick, with no other change, hana is first again.
    usage_at(ledger_path, "lee", t0 + PRIORITY.half_life_seconds - 7200, "120")
    clock[0] = t0 + PRIORITY.half_life_seconds - 60  # ann's week is not over yet
    allocator.tick()
    queued = [(e.id, e.user, e.position) for e in allocator.summary().entries
              if e.state == "queued"]
    assert queued == [(2, "hana", 1), (3, "lee", 2)]
    [hana, lee] = [e.priority for e in allocator.summary().entries if e.priority]
    assert hana.age == lee.age == 1.0 and hana.fairshare > lee.fairshare
    assert allocator.release("ann", 1)[0].text.startswith("released: reservation 1")
    assert [e.user for e in allocator.summary().entries if e.state == "granted"] == ["hana"]


def usage_at(path: Path, user: str, at: float, cost: str) -> None:
    """A billed window's usage line, as the engine writes it."""
    end = int(at)
    with forge(path) as db:
        db.execute("INSERT INTO usage_lines VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                   "$11, $12, NULL)", (end, user, "job-1", "gpu01:9835",
                                       "NVIDIA A100-SXM4-80GB", "3600", "0", cost, 0.0, "0",
                                       "0", user))


def test_an_unreadable_or_absent_ledger_is_no_usage(tmp_path: Path) -> None:
    config = settings_from_mapping({"billing": {"ledger": str(tmp_path / "none.sqlite3")}},
                                   "test")
    assert LedgerUsage(config)(1_800_000_000.0) == Usage()
    assert Decimal(0) == 0  # the usage is money, read exactly, then weighed as a float
