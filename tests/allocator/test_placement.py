"""Placement: FIFO with first fit and conservative backfill, as a pure function. Table cases for
what the design asks, then the properties on any cluster and queue (hypothesis): no GPU is
given twice, equal requests start in the order they came, and a later request never moves an
earlier one's start."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.placement import Gpu, Held, Planner, Slot, Want, first_fit_now, plan, why_never

NOW = 1000.0
HOUR = 3600.0


def cluster(nodes: int = 2, per_node: int = 4, model: str = "NVIDIA A100") -> list[Gpu]:
    return [Gpu(f"n{n}", i, model) for n in range(nodes) for i in range(per_node)]


def test_first_fit_takes_the_first_node_with_room_and_its_first_free_gpus() -> None:
    held = [Held("n0", (0, 1, 2), NOW + HOUR)]
    slots = plan(cluster(), held, [Want(1, "ann", 2, HOUR)], NOW)
    assert slots[1] == Slot(1, "n1", (0, 1), NOW, NOW + HOUR)
    slots = plan(cluster(), held, [Want(1, "ann", 1, HOUR)], NOW)
    assert slots[1] == Slot(1, "n0", (3,), NOW, NOW + HOUR)


def test_model_node_and_specific_gpus_are_honoured() -> None:
    gpus = [*cluster(1, 2, "NVIDIA A100"), Gpu("n1", 0, "RTX 3090"), Gpu("n1", 1, "RTX 3090")]
    assert plan(gpus, [], [Want(1, "ann", 1, HOUR, model="3090")], NOW)[1].node == "n1"
    assert plan(gpus, [], [Want(1, "ann", 1, HOUR, node="n1")], NOW)[1].node == "n1"
    slot = plan(gpus, [Held("n0", (0,), NOW + HOUR)], [Want(1, "ann", 1, HOUR, node="n0",
                                                               gpus=(0,))], NOW)[1]
    assert (slot.gpus, slot.start) == ((0,), NOW + HOUR)  # waits for that very GPU


def test_a_full_cluster_queues_with_estimated_starts_in_order() -> None:
    held = [Held("n0", (0, 1, 2, 3), NOW + HOUR), Held("n1", (0, 1, 2, 3), NOW + 2 * HOUR)]
    slots = plan(cluster(), held, [Want(1, "carol", 4, HOUR), Want(2, "dave", 4, HOUR)], NOW)
    assert (slots[1].node, slots[1].start) == ("n0", NOW + HOUR)
    assert slots[2].start == NOW + 2 * HOUR  # n0 after carol, or n1: both free then


def test_backfill_only_where_it_cannot_delay_the_head() -> None:
    # Two of n0's GPUs are free, two are held for 3 hours; carol (the head) needs all four.
    held = [Held("n0", (2, 3), NOW + 3 * HOUR)]
    gpus = cluster(1)
    head = Want(1, "carol", 4, HOUR)
    # Two GPUs are free now. Erin's short job fits before carol's start: it backfills.
    short = plan(gpus, held, [head, Want(2, "erin", 1, HOUR / 2)], NOW)
    assert short[2].start == NOW and short[1].start == NOW + 3 * HOUR
    # A long job on them would run into carol's start: it waits behind her.
    long = plan(gpus, held, [head, Want(2, "erin", 1, 4 * HOUR)], NOW)
    assert long[1].start == NOW + 3 * HOUR and long[2].start >= long[1].end


def test_the_naive_peer_passes_the_head_over() -> None:
    held = [Held("n0", (0, 1), NOW + HOUR)]
    queue = [Want(1, "carol", 4, HOUR), Want(2, "erin", 2, 10 * HOUR)]
    assert set(first_fit_now(cluster(1), held, queue, NOW)) == {2}  # erin now, carol in 10 h
    slots = plan(cluster(1), held, queue, NOW)
    assert slots[1].start == NOW + HOUR and slots[2].start == slots[1].end


def test_why_a_request_can_never_fit() -> None:
    gpus = cluster(2, 4)
    assert why_never(Want(1, "ann", 4, HOUR), gpus) is None
    assert "at most 4" in str(why_never(Want(1, "ann", 5, HOUR), gpus))
    assert "no node is called 'n9'" in str(why_never(Want(1, "ann", 1, HOUR, node="n9"), gpus))
    assert "no GPU matches the model 'H100'" in str(
        why_never(Want(1, "ann", 1, HOUR, model="H100"), gpus))
    assert "n0 has no GPU 7" in str(
        why_never(Want(1, "ann", 1, HOUR, node="n0", gpus=(7,)), gpus))


# --- properties ----------------------------------------------------------------------------

clusters = st.lists(st.integers(1, 8), min_size=1, max_size=5).map(
    lambda sizes: [Gpu(f"n{n}", i, "A100" if n % 2 else "V100")
                   for n, size in enumerate(sizes) for i in range(size)])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Gpu], list[Held], list[Want]]:
    gpus = draw(clusters)
    nodes = sorted({g.node for g in gpus})
    held, taken = [], set()
    for g in gpus:
        if draw(st.booleans()) and (g.node, g.index) not in taken:
            taken.add((g.node, g.index))
            held.append(Held(g.node, (g.index,), NOW + draw(st.integers(1, 10)) * 600))
    wants = []
    for id in range(1, draw(st.integers(1, 25)) + 1):
        node = draw(st.sampled_from([None, *nodes]))
        wants.append(Want(id, f"u{id % 4}", draw(st.integers(1, 4)),
                          draw(st.integers(1, 12)) * 600.0,
                          model=draw(st.sampled_from([None, "A100", "V100"])), node=node))
    return gpus, held, wants


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_no_gpu_is_given_twice(scenario: tuple[list[Gpu], list[Held], list[Want]]) -> None:
    gpus, held, wants = scenario
    slots = plan(gpus, held, wants, NOW)
    busy: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for h in held:
        for i in h.gpus:
            busy.setdefault((h.node, i), []).append((NOW, h.until))
    for slot in slots.values():
        assert slot.start >= NOW
        want = next(w for w in wants if w.id == slot.id)
        assert len(slot.gpus) == want.count and len(set(slot.gpus)) == want.count
        assert want.node in (None, slot.node)
        for i in slot.gpus:
            gpu = next(g for g in gpus if (g.node, g.index) == (slot.node, i))
            assert want.model is None or want.model in gpu.model
            for other in busy.get((slot.node, i), []):
                assert not _overlap(other, (slot.start, slot.end)), "a GPU given twice"
            busy.setdefault((slot.node, i), []).append((slot.start, slot.end))
    # Whatever can ever fit gets a slot.
    for want in wants:
        assert (want.id in slots) == (why_never(want, gpus) is None)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_later_request_never_moves_an_earlier_one(
        scenario: tuple[list[Gpu], list[Held], list[Want]]) -> None:
    gpus, held, wants = scenario
    whole = plan(gpus, held, wants, NOW)
    for k in range(len(wants)):
        ahead = plan(gpus, held, wants[:k + 1], NOW)
        assert ahead.get(wants[k].id) == whole.get(wants[k].id)


@settings(max_examples=300, deadline=None)
@given(clusters, st.integers(1, 4), st.integers(1, 6), st.integers(2, 20),
       st.lists(st.integers(1, 10), max_size=20))
def test_equal_requests_start_in_the_order_they_came(
        gpus: list[Gpu], count: int, hours: int, n: int, ends: list[int]) -> None:
    held = [Held(g.node, (g.index,), NOW + e * 600) for g, e in zip(gpus, ends, strict=False)]
    wants = [Want(id, f"u{id}", count, hours * HOUR) for id in range(1, n + 1)]
    slots = plan(gpus, held, wants, NOW)
    starts = [slots[w.id].start for w in wants if w.id in slots]
    assert starts == sorted(starts)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_each_slot_is_the_earliest_there_is(
        scenario: tuple[list[Gpu], list[Held], list[Want]]) -> None:
    """Against a brute force: no start the planner passed over (now, or the end of anything
    held or planned on the request's GPUs) fits the request earlier on any node."""
    gpus, held, wants = scenario
    planner = Planner(gpus, held, NOW)
    for want in wants:
        lines = {key: t for key, t in planner.timelines.items()
                 if want.node in (None, key[0])
                 and (want.model is None or want.model in
                      next(g.model for g in gpus if (g.node, g.index) == key))}
        times = sorted({NOW, *(e for t in lines.values() for e in t.ends)})
        earliest = next((t for t in times if any(
            sum(line.free(t, t + want.seconds) for (n, _), line in lines.items() if n == node)
            >= want.count for node in {n for n, _ in lines})), None)
        slot = planner.place(want)
        assert (slot.start if slot else None) == earliest


def test_a_gpu_another_user_works_on_is_never_planned_for_anyone_else() -> None:
    """bob's process runs on n0's GPU 0: ann gets GPU 1, bob himself may have GPU 0, and a
    request that needs both waits for ever (no slot: the process has no known end)."""
    gpus = cluster(1, 2)
    in_use = {("n0", 0): frozenset({"bob"})}
    assert plan(gpus, [], [Want(1, "ann", 1, HOUR)], NOW, in_use)[1].gpus == (1,)
    assert plan(gpus, [], [Want(1, "bob", 1, HOUR)], NOW, in_use)[1].gpus == (0,)
    assert plan(gpus, [], [Want(1, "ann", 2, HOUR)], NOW, in_use) == {}
    # Without the process, the same request starts now.
    assert plan(gpus, [], [Want(1, "ann", 2, HOUR)], NOW, {})[1].start == NOW


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_no_slot_is_on_a_gpu_another_user_works_on(
        scenario: tuple[list[Gpu], list[Held], list[Want]], data: st.DataObject) -> None:
    gpus, held, wants = scenario
    in_use = {(g.node, g.index): frozenset({data.draw(st.sampled_from(["u0", "u1", "x"]))})
              for g in gpus if data.draw(st.booleans())}
    for slot in plan(gpus, held, wants, NOW, in_use).values():
        want = next(w for w in wants if w.id == slot.id)
        for i in slot.gpus:
            assert not in_use.get((slot.node, i), frozenset()) - {want.user}


class _Forgetful(Planner):
    """The same planner knowing nothing from one request to the next: every node is looked at
    afresh for every request."""

    def place(self, want: Want) -> Slot | None:
        self._known = [{} for _ in self._known]
        for kept in (self._heaps, self._members, self._counts, self._grown, self._joined):
            kept.clear()
        return super().place(want)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_what_the_planner_keeps_between_requests_changes_nothing(
        scenario: tuple[list[Gpu], list[Held], list[Want]], data: st.DataObject) -> None:
    """The heaps and the earliest starts kept from request to request (refreshed as nodes
    change, joined as gaps grow) give exactly the slots of looking at every node afresh."""
    gpus, held, wants = scenario
    in_use = {(g.node, g.index): frozenset({data.draw(st.sampled_from(["u0", "u1", "x"]))})
              for g in gpus if data.draw(st.integers(0, 4)) == 0}
    wants = [Want(w.id, w.user, w.count, w.seconds, w.model, w.node,
                  preempt=data.draw(st.integers(0, 9)) == 0) for w in wants]
    kept = Planner(gpus, held, NOW, in_use, wants)
    afresh = _Forgetful(gpus, held, NOW, in_use)
    for want in wants:
        assert kept.place(want) == afresh.place(want)
