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
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import NamedTuple

from gpuacct.patterns import ModelMatcher

INFINITY = float("inf")
_Moment = tuple[float, tuple[int, ...]]  # from then on, these GPUs are free together
_Shape = tuple[str | None, int, float]  # a request's model, count and length


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


class Slot(NamedTuple):
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


class _Timeline:
    """One GPU's busy intervals from `origin` on, sorted and never overlapping, with its free
    gaps between them (`gaps`, the longest `gap` long) and when it is free for good (`tail`)."""

    __slots__ = ("ends", "gap", "gaps", "origin", "starts", "tail")

    def __init__(self, origin: float, held_until: list[float] | None = None) -> None:
        """From `origin` on, held until the latest of `held_until`."""
        self.origin = origin
        self.tail = max(held_until) if held_until else origin
        self.starts: list[float] = [origin] if held_until else []
        self.ends: list[float] = [self.tail] if held_until else []
        self.gaps: list[tuple[float, float]] = []
        self.gap = 0.0

    def free(self, start: float, end: float) -> bool:
        i = bisect_right(self.starts, start)
        if i and self.ends[i - 1] > start:
            return False
        return i == len(self.starts) or self.starts[i] >= end

    def add(self, start: float, end: float) -> None:
        if start >= self.tail:  # after all else
            self.starts.append(start)
            self.ends.append(end)
            if start > self.tail:
                self.gaps.append((self.tail, start))
                self.gap = max(self.gap, start - self.tail)
            self.tail = end
            return
        i = bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        free_from, self.gaps = self.origin, []
        for s, e in zip(self.starts, self.ends, strict=True):
            if s > free_from:
                self.gaps.append((free_from, s))
            free_from = max(free_from, e)
        self.gap = max((e - s for s, e in self.gaps), default=0.0)
        self.tail = free_from


class _Free(NamedTuple):
    """When 1, 2, ... of a set of a node's GPUs are first free together for one length."""

    starts: list[float]  # starts[c - 1]: the earliest moment c of them are
    tails: list[tuple[float, int]] | None  # only where free for good: (from, GPU), sorted
    moments: list[_Moment]  # otherwise: each moment the number grows, with the GPUs then

    def gpus(self, count: int) -> tuple[int, ...]:
        """The GPUs for `count` at their earliest start: the lowest of all free then."""
        if self.tails is not None:
            free = bisect_right(self.starts, self.starts[count - 1])  # all free by then
            return tuple(sorted([i for _, i in self.tails[:free]])[:count])
        for _, gpus in self.moments:
            if len(gpus) >= count:
                return tuple(sorted(gpus)[:count])
        raise ValueError(f"never {count} of these GPUs")


class Planner:
    """The cluster's GPUs with what is held and planned on each, for one planning pass.

    When a set of a node's GPUs (of a model, given ones, those free of others' work) is free
    together for a length is one look that answers every count, kept until a slot is planned
    on the node. A request longer than every free gap can only start where GPUs are free for
    good, so its length does not matter. The nodes nobody else works on are kept in heaps by
    earliest start, per model and count: one of all nodes for any length, and one per shorter
    length of the nodes with a gap that long, which alone can start it earlier. A request
    costs a few heap steps, not one look a node."""

    def __init__(self, inventory: Iterable[Gpu], held: Iterable[Held], now: float,
                 in_use: Mapping[tuple[str, int], frozenset[str]] | None = None,
                 queue: Iterable[Want] = ()) -> None:
        """`queue`, where known, says which shapes of request to prepare for."""
        self.now = now
        self._expected: dict[str | None, set[int]] = {}
        for want in queue:
            self._expected.setdefault(want.model, set()).add(want.count)
        self.in_use = {k: users for k, users in (in_use or {}).items() if users}
        self._busy_nodes = {node for node, _ in self.in_use}
        self.nodes: dict[str, list[Gpu]] = {}
        for gpu in sorted(inventory, key=attrgetter("node", "index")):
            self.nodes.setdefault(gpu.node, []).append(gpu)
        busy_until: dict[tuple[str, int], list[float]] = {}
        for h in held:
            if h.until > now:
                for index in h.gpus:
                    busy_until.setdefault((h.node, index), []).append(h.until)
        self.timelines = {(g.node, g.index): _Timeline(now, busy_until.get((g.node, g.index)))
                          for g in chain(*self.nodes.values())}
        self._patterns: dict[str, ModelMatcher] = {}
        self._matched: dict[tuple[str, str], bool] = {}
        self._order = {node: i for i, node in enumerate(self.nodes)}
        self._version = dict.fromkeys(self.nodes, 0)  # slots planned on each node so far
        self._set_numbers: dict[tuple[object, ...], int] = {}  # (node, model, GPUs, asker)
        self._sets: dict[tuple[object, ...], int] = {}  # (node, *GPUs) -> its number
        # by number: the node, and the GPUs' timelines and indices
        self._set_lines: list[tuple[str, list[tuple[_Timeline, int]]]] = []
        # by set number and length: what is free, as of a version of the node
        self._known: list[dict[float, tuple[int, _Free]]] = []
        self._heaps: dict[_Shape, list[tuple[float, int, int, int]]] = {}
        # For each model and length: the nodes in its heaps, and the counts it has heaps of.
        self._members: dict[tuple[str | None, float], set[str]] = {}
        self._counts: dict[tuple[str | None, float], list[int]] = {}
        # The nodes whose gap grew to each length (of a heap), and how many of them each
        # heap has looked at.
        self._grown: dict[float, list[str]] = {}
        self._joined: dict[tuple[str | None, float], int] = {}
        # No free gap anywhere is longer: a request longer than this can only start where
        # its GPUs are free for good, so its length does not matter (one shape for all).
        self._node_lines = {node: [self.timelines[(node, g.index)] for g in gpus]
                            for node, gpus in self.nodes.items()}
        self._node_gap = {node: max(t.gap for t in lines)
                          for node, lines in self._node_lines.items()}
        self._longest_gap = max(self._node_gap.values(), default=0.0)

    def _eligible(self, node: str, model: str | None, gpus: tuple[int, ...] | None,
                  asker: str | None) -> list[Gpu]:
        """The node's GPUs of the model (a pattern) among `gpus`, and where `asker` is given,
        free of anyone else's work."""
        eligible = self.nodes[node]
        if asker is not None:
            eligible = [g for g in eligible
                        if not self.in_use.get((node, g.index), frozenset()) - {asker}]
        if gpus is not None:
            eligible = [g for g in eligible if g.index in gpus]
        if model is not None:
            models = {g.model for g in eligible}
            matching = {m for m in models if self._matches(model, m)}
            if matching != models:
                eligible = [g for g in eligible if g.model in matching]
        return eligible

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

    def _sweep(self, lines: list[tuple[_Timeline, int]], length: float) -> _Free:
        """When 1, 2, ... of the GPUs are first free together for `length`.

        For infinite length, the count-th moment one is free for good. Otherwise
        each GPU's gaps long enough give a window of possible starts, and it is free for good
        from its tail on; sweeping the windows' openings and closings in time order counts
        how many are open at each moment."""
        if length == INFINITY:
            tails = sorted([(t.tail, index) for t, index in lines])
            return _Free([t for t, _ in tails], tails, [])
        events: list[tuple[float, int, int]] = []  # (time, 0 opens / 1 closes, GPU index)
        for t, index in lines:
            if t.gap >= length:
                for s, e in t.gaps:
                    if e - s >= length:
                        events += [(s, 0, index), (e - length, 1, index)]
            events.append((t.tail, 0, index))
        events.sort()
        open_: set[int] = set()
        starts: list[float] = []
        moments: list[_Moment] = []
        most, last = len(lines), len(events) - 1
        for i, (time, closes, index) in enumerate(events):
            if closes:
                open_.discard(index)
                continue
            open_.add(index)
            # Counted once all that open at this moment have: the lowest of them all are
            # chosen, so the choice depends only on what is free.
            if len(open_) > len(starts) and (i == last or events[i + 1] > (time, 1)):
                starts += [time] * (len(open_) - len(starts))
                moments.append((time, tuple(open_)))
                if len(starts) == most:
                    break
        return _Free(starts, None, moments)

    def _set_of(self, node: str, model: str | None, gpus: tuple[int, ...] | None = None,
                asker: str | None = None) -> int:
        """The number of the set of the node's GPUs `_eligible` gives: requests that can
        have the same GPUs (any model, or a model all of them are) share what is known."""
        which = (node, model, gpus, asker)
        number = self._set_numbers.get(which)
        if number is None:
            eligible = self._eligible(node, model, gpus, asker)
            number = self._sets.setdefault((node, *(g.index for g in eligible)), len(self._sets))
            if number == len(self._set_lines):
                self._set_lines.append(
                    (node, [(self.timelines[(node, g.index)], g.index) for g in eligible]))
                self._known.append({})
            self._set_numbers[which] = number
        return number

    def _want_set(self, want: Want, node: str) -> int:
        # Where another's work runs, what is free depends on who asks.
        asker = want.user if node in self._busy_nodes and not want.preempt else None
        return self._set_of(node, want.model, want.gpus, asker)

    def _free(self, number: int, span: float) -> _Free:
        """When the GPUs of a set are free together for a request of length `span`."""
        node, lines = self._set_lines[number]
        if span > self._node_gap[node]:  # only where free for good, whatever the length
            span = INFINITY
        version = self._version[node]
        known = self._known[number]
        kept = known.get(span)
        if kept is None or kept[0] != version:
            kept = known[span] = (version, self._sweep(lines, span))
        return kept[1]

    def _earliest(self, want: Want, node: str, count: int, span: float) -> float | None:
        """The node's earliest start for the request; None if never."""
        starts = self._free(self._want_set(want, node), span).starts
        return starts[count - 1] if count <= len(starts) else None

    def _heap(self, model: str | None, count: int, span: float) -> _Shape:
        """The heap of the nodes nobody else works on for a shape of request: for infinite
        `span` all of them, for a finite one at least those with a gap that long."""
        shape, group = (model, count, span), (model, span)
        if group not in self._members:
            self._members[group] = set()
            # The heaps of every count the queue asks for, filled by one look at each node.
            self._counts[group] = sorted({count, *self._expected.get(model, ())})
            for expected in self._counts[group]:
                self._heaps[(model, expected, span)] = []
            if span != INFINITY:
                self._joined[group] = len(self._grown.setdefault(span, []))
            self._join(group, [n for n in self.nodes if n not in self._busy_nodes and (
                span == INFINITY or self._node_gap[n] >= span)])
        elif span != INFINITY:  # the nodes whose gap grew that long since last time
            grown = self._grown[span]
            self._join(group, grown[self._joined[group]:])
            self._joined[group] = len(grown)
        if shape not in self._heaps:
            self._counts[group].append(count)
            heap = self._heaps[shape] = []
            for node in self._members[group]:
                number = self._set_of(node, model)
                starts = self._free(number, span).starts
                if count <= len(starts):
                    heap.append((starts[count - 1], self._order[node], number,
                                 self._version[node]))
            heapq.heapify(heap)
        return shape

    def _join(self, group: tuple[str | None, float], nodes: Iterable[str]) -> None:
        """Add nodes to the heaps of a model and length, keyed by their earliest starts. A
        node stays when its gap shrinks: its start is then where its GPUs are free for good,
        as in the heap of all nodes."""
        model, span = group
        members = self._members[group]
        for node in nodes:
            if node in members or self._node_gap[node] < span != INFINITY:
                continue
            members.add(node)
            number = self._set_of(node, model)
            starts = self._free(number, span).starts
            for count in self._counts[group]:
                if count <= len(starts):
                    heapq.heappush(self._heaps[(model, count, span)], (
                        starts[count - 1], self._order[node], number, self._version[node]))

    def _top(self, shape: _Shape, before: tuple[float, int, str] | None = None
             ) -> tuple[float, int, str] | None:
        """The heap's node with the earliest start (and the start), the first among equals;
        None if there is none, or none before `before`.

        Entries are (start, node order, GPU set, the node's version then). A start only ever
        moves later: an entry of an older version is looked at again when it comes to the
        top, so a pass costs a few heap steps a request, not one look a node."""
        _, count, span = shape
        heap, versions, lines = self._heaps[shape], self._version, self._set_lines
        until, last = before[:2] if before is not None else (INFINITY, 0)
        while heap:
            start, order, number, version = heap[0]
            if start >= until and (start > until or order >= last):
                return None
            node = lines[number][0]
            current = versions[node]
            if version == current:
                return start, order, node
            start = self._free(number, span).starts[count - 1]
            heapq.heapreplace(heap, (start, order, number, current))
        return None

    def _earliest_of_free_nodes(self, want: Want, count: int,
                                span: float) -> tuple[float, int, str] | None:
        """The node nobody else works on with the earliest start for the request (the start,
        its order, the node).

        Where no GPU has a gap long enough, a node's earliest start is the same for any
        length: one heap of all nodes per model and count holds those. For a shorter
        request, only the nodes with a gap at least as long can start it earlier than that
        heap says, and a heap per length holds those."""
        best = None
        if span != INFINITY:
            best = self._top(self._heap(want.model, count, span))
        return self._top(self._heap(want.model, count, INFINITY), best) or best

    def place(self, want: Want) -> Slot | None:
        """Plan one request at its earliest slot, the first node first among equals (and keep
        it planned); None if it never fits."""
        count = len(want.gpus) if want.gpus is not None else want.count
        span = want.seconds if want.seconds <= self._longest_gap else INFINITY
        found = []
        if want.node is not None or want.gpus is not None or want.preempt:
            nodes: Iterable[str] = [want.node] if want.node is not None else self.nodes
        else:  # any node: the heap over the free ones, and each busy one asked itself
            free = self._earliest_of_free_nodes(want, count, span)
            found, nodes = [free] if free else [], self._busy_nodes
        if nodes:
            found += [(s, self._order[n], n) for n in nodes if n in self.nodes
                      for s in [self._earliest(want, n, count, span)] if s is not None]
        if not found:
            return None
        start, _, node = min(found) if len(found) > 1 else found[0]
        gpus = self._free(self._want_set(want, node), span).gpus(count)
        slot = Slot(want.id, node, gpus, start, start + want.seconds)
        for index in gpus:
            self.timelines[(node, index)].add(slot.start, slot.end)
        # A slot can fill a gap: the node's longest is its GPUs' longest now.
        was, self._node_gap[node] = self._node_gap[node], max(
            [t.gap for t in self._node_lines[node]])
        self._longest_gap = max(self._longest_gap, self._node_gap[node])
        self._version[node] += 1
        if node not in self._busy_nodes:  # to join the heaps of the lengths its gap has
            for length, grown in self._grown.items():
                if was < length <= self._node_gap[node]:
                    grown.append(node)
        return slot


def plan(inventory: Iterable[Gpu], held: Iterable[Held], queue: Sequence[Want],
         now: float, in_use: Mapping[tuple[str, int], frozenset[str]] | None = None
         ) -> dict[int, Slot]:
    """A slot for every request of the queue (in queue order) that can ever fit around what
    is held and what runs."""
    planner = Planner(inventory, held, now, in_use, queue)
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
