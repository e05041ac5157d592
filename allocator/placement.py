"""Placement: which queued request gets which GPUs now, and when the others can expect theirs.

FIFO with first fit and conservative backfill, the way Slurm's backfill scheduler plans: each
request, in the order it arrived, gets the earliest slot on one node where enough matching GPUs
are free for its whole duration, around the reservations held now and the slots already planned
for the requests ahead of it. A slot that starts now is a grant; the others are estimated starts.
A later request can start before an earlier one only in a gap that leaves every earlier slot
where it was, so a backfilled request never delays anyone ahead of it. Held reservations count
as busy until their end: a release only ever makes the estimates earlier. A GPU another user's
process runs on (`in_use`, as its node reports it) is busy for everyone else with no known end:
it is never planned for them while that process runs.

Pure: no clock, no store. `allocator.service` feeds it the inventory and the queue.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

from gpuacct.patterns import ModelMatcher


@dataclass(frozen=True)
class Gpu:
    node: str
    index: int
    model: str


@dataclass(frozen=True)
class Want:
    """A request: `count` GPUs for `seconds`, on one node, optionally of a model (a pattern
    searched in the model name, any case), on a given node, or exactly the GPUs `gpus`."""

    id: int
    user: str
    count: int
    seconds: float
    model: str | None = None
    node: str | None = None
    gpus: tuple[int, ...] | None = None
    preempt: bool = False  # an administrator's: placed over running work


@dataclass(frozen=True)
class Held:
    """GPUs of a node that are reserved until `until`."""

    node: str
    gpus: tuple[int, ...]
    until: float


@dataclass(frozen=True)
class Slot:
    """Where and when a request runs: granted if `start` is now."""

    id: int
    node: str
    gpus: tuple[int, ...]
    start: float
    end: float


def why_never(want: Want, inventory: Iterable[Gpu]) -> str | None:
    """Why the request can never be placed on these GPUs, however long it waits; None if it can."""
    gpus = list(inventory)
    if want.node is not None and not any(g.node == want.node for g in gpus):
        return f"no node is called {want.node!r}"
    candidates = [g for g in gpus if want.node in (None, g.node)]
    if want.gpus is not None:
        have = {g.index for g in candidates}
        missing = sorted(set(want.gpus) - have)
        if missing:
            return (f"{want.node} has no GPU {', '.join(map(str, missing))} "
                    f"(it has {', '.join(map(str, sorted(have)))})")
        candidates = [g for g in candidates if g.index in want.gpus]
    if want.model is not None:
        pattern = ModelMatcher(want.model)
        models = sorted({g.model for g in candidates})
        candidates = [g for g in candidates if pattern.search(g.model)]
        if not candidates:
            return f"no GPU matches the model {want.model!r} (there are {', '.join(models)})"
    per_node: dict[str, int] = {}
    for g in candidates:
        per_node[g.node] = per_node.get(g.node, 0) + 1
    most = max(per_node.values(), default=0)
    if want.count > most:
        where = f"on {want.node}" if want.node else "on any one node"
        return f"{want.count} GPUs asked for, but at most {most} match {where}"
    return None


@dataclass
class _Timeline:
    """One GPU's busy intervals, sorted and never overlapping."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def free(self, start: float, end: float) -> bool:
        i = bisect_right(self.starts, start)
        if i and self.ends[i - 1] > start:
            return False
        return i == len(self.starts) or self.starts[i] >= end

    def add(self, start: float, end: float) -> None:
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)


class Planner:
    """The cluster's GPUs with what is held and planned on each, for one planning pass.

    A node's earliest slot for one shape of request (model, GPUs, count, length) is kept until
    a slot is planned on that node, and the nodes' earliest slots for a shape are kept in a
    heap, so a queue of requests of a few shapes costs one search per node and shape, then a
    few per placement."""

    def __init__(self, inventory: Iterable[Gpu], held: Iterable[Held], now: float,
                 in_use: Mapping[tuple[str, int], frozenset[str]] | None = None) -> None:
        self.now = now
        self.in_use = {k: users for k, users in (in_use or {}).items() if users}
        self._busy_nodes = {node for node, _ in self.in_use}
        self.nodes: dict[str, list[Gpu]] = {}
        for gpu in sorted(inventory, key=lambda g: (g.node, g.index)):
            self.nodes.setdefault(gpu.node, []).append(gpu)
        self.timelines = {(g.node, g.index): _Timeline() for g in chain(*self.nodes.values())}
        for h in held:
            for index in h.gpus:
                timeline = self.timelines.get((h.node, index))
                if timeline is not None and h.until > now:
                    timeline.add(now, h.until)
        self._patterns: dict[str, ModelMatcher] = {}
        self._matched: dict[tuple[str, str], bool] = {}
        self._earliest: dict[str, dict[tuple[object, ...], Slot | None]] = {}
        self._order = {node: i for i, node in enumerate(self.nodes)}
        self._planned = dict.fromkeys(self.nodes, 0)  # slots planned on each node so far
        self._heaps: dict[tuple[object, ...], list[tuple[float, int, str, int]]] = {}

    def _eligible(self, want: Want, node: str) -> list[Gpu]:
        gpus = self.nodes[node]
        if node in self._busy_nodes and not want.preempt:  # someone else's work runs there
            gpus = [g for g in gpus
                    if not self.in_use.get((node, g.index), frozenset()) - {want.user}]
        if want.gpus is not None:
            gpus = [g for g in gpus if g.index in want.gpus]
        if want.model is not None:
            gpus = [g for g in gpus if self._matches(want.model, g.model)]
        return gpus

    def _matches(self, pattern: str, model: str) -> bool:
        """Whether the model name matches: a cluster has a few models, a queue a few
        patterns, so each pair is searched once a pass."""
        found = self._matched.get((pattern, model))
        if found is None:
            matcher = self._patterns.get(pattern)
            if matcher is None:
                matcher = self._patterns[pattern] = ModelMatcher(pattern)
            found = self._matched[(pattern, model)] = matcher.search(model)
        return found

    def _earliest_on(self, want: Want, gpus: list[Gpu], after: float,
                     before: float) -> Slot | None:
        """The earliest slot on one node starting in [after, before), lowest GPUs first.

        Each GPU's free gaps long enough for the request give a window of possible starts;
        sweeping the windows' openings and closings in time order finds the first moment
        `count` of them are open at once."""
        count = len(want.gpus) if want.gpus is not None else want.count
        length = want.seconds
        events: list[tuple[float, int, int]] = []  # (time, 0 opens / 1 closes, GPU index)
        for g in gpus:
            t = self.timelines[(g.node, g.index)]
            free_from = after
            for s, e in zip(t.starts, t.ends, strict=True):
                if e <= free_from:
                    continue
                if s - free_from >= length and free_from < before:
                    events += [(free_from, 0, g.index), (s - length, 1, g.index)]
                free_from = e  # later than free_from: the interval was not skipped
            if free_from < before:
                events.append((free_from, 0, g.index))  # free for good from here
        events.sort()
        open_: set[int] = set()
        for time, closes, index in events:
            if closes:
                open_.discard(index)
                continue
            open_.add(index)
            if len(open_) >= count:
                chosen = tuple(sorted(open_)[:count])
                return Slot(want.id, gpus[0].node, chosen, time, time + length)
        return None

    def _on(self, want: Want, node: str, count: int) -> Slot | None:
        """The node's earliest slot for the request, kept until a slot is planned there."""
        memo = self._earliest.setdefault(node, {})
        # Where another's work runs, what is free depends on who asks.
        shape = (want.model, want.gpus, count, want.seconds,
                 want.user if node in self._busy_nodes else None, want.preempt)
        if shape not in memo:
            gpus = self._eligible(want, node)
            memo[shape] = (self._earliest_on(want, gpus, self.now, float("inf"))
                           if len(gpus) >= count else None)
        return memo[shape]

    def _earliest_of_free_nodes(self, want: Want, count: int) -> Slot | None:
        """The earliest slot over the nodes nobody else works on, the first node first among
        equals: a heap per shape of request, each node's entry refreshed only after a slot
        was planned on it, so a pass costs a few heap steps a request, not one look a node."""
        shape = (want.model, want.count, want.seconds)
        heap = self._heaps.get(shape)
        if heap is None:
            heap = self._heaps[shape] = []
            for node in self.nodes:
                if node not in self._busy_nodes:
                    slot = self._on(want, node, count)
                    if slot is not None:
                        heap.append((slot.start, self._order[node], node, self._planned[node]))
            heapq.heapify(heap)
        while heap:
            _, order, node, planned = heap[0]
            if planned == self._planned[node]:
                return self._on(want, node, count)
            slot = self._on(want, node, count)  # something was planned there since
            if slot is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (slot.start, order, node, self._planned[node]))
        return None

    def place(self, want: Want) -> Slot | None:
        """Plan one request at its earliest slot, the first node first among equals (and keep
        it planned); None if it never fits."""
        count = len(want.gpus) if want.gpus is not None else want.count
        if want.node is not None or want.gpus is not None or want.preempt:
            nodes = [want.node] if want.node is not None else list(self.nodes)
            found = [s for n in nodes if n in self.nodes
                     for s in [self._on(want, n, count)] if s is not None]
        else:  # any node: the heap over the free ones, and each busy one asked itself
            found = [s for s in [self._earliest_of_free_nodes(want, count),
                                 *(self._on(want, n, count) for n in self._busy_nodes)]
                     if s is not None]
        if not found:
            return None
        best = min(found, key=lambda s: (s.start, self._order[s.node]))
        for index in best.gpus:
            self.timelines[(best.node, index)].add(best.start, best.end)
        self._earliest.pop(best.node, None)
        self._planned[best.node] += 1
        return Slot(want.id, best.node, best.gpus, best.start, best.end)


def plan(inventory: Iterable[Gpu], held: Iterable[Held], queue: Sequence[Want],
         now: float, in_use: Mapping[tuple[str, int], frozenset[str]] | None = None
         ) -> dict[int, Slot]:
    """A slot for every request of the queue (in queue order) that can ever fit around what
    is held and what runs."""
    planner = Planner(inventory, held, now, in_use)
    slots = {}
    for want in queue:
        slot = planner.place(want)
        if slot is not None:
            slots[want.id] = slot
    return slots


def first_fit_now(inventory: Iterable[Gpu], held: Iterable[Held], queue: Sequence[Want],
                  now: float) -> dict[int, Slot]:
    """The naive peer: grant in queue order whatever fits on the GPUs free right now, with no
    plan for the rest (a big request at the head can be passed over for ever)."""
    busy = {(h.node, i) for h in held if h.until > now for i in h.gpus}
    nodes: dict[str, list[Gpu]] = {}
    for gpu in sorted(inventory, key=lambda g: (g.node, g.index)):
        nodes.setdefault(gpu.node, []).append(gpu)
    granted = {}
    for want in queue:
        model = ModelMatcher(want.model) if want.model is not None else None
        for node, gpus in nodes.items():
            if want.node not in (None, node):
                continue
            free = [g.index for g in gpus if (node, g.index) not in busy
                    and (want.gpus is None or g.index in want.gpus)
                    and (model is None or model.search(g.model))]
            count = len(want.gpus) if want.gpus is not None else want.count
            if len(free) >= count:
                granted[want.id] = Slot(want.id, node, tuple(free[:count]), now,
                                        now + want.seconds)
                busy.update((node, i) for i in free[:count])
                break
    return granted
