"""The allocator: requests in, reservations and the queue out, every step stored and audited.

After every change the queue is planned again (allocator.placement); a request whose slot
starts now is granted at once. `tick` ends what expired, warns holders before the end, and
plans again. What users must be told is stored as notices that go out with the desired state,
so the nodes tell them on their terminals, once.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from allocator.fairshare import Factors, Usage, prioritize
from allocator.placement import Gpu, Held, Slot, Want, plan, why_never
from allocator.store import AllocationStore, Changes, Request
from gpuacct.allocation import ANOTHER_USER, Entry, GpuStatus, Priority, Reserve, Summary
from gpuacct.config import AllocatorSettings
from gpuacct.policy import NodeGpu, Notice, Reservations, ReservedGpu
from gpuacct.wording import duration

log = logging.getLogger(__name__)
NOTICE_SECONDS = 3600.0  # a notice goes out with the desired state this long
PROBE = 2**62  # a dry run's request: after every real one among equals


class AllocationError(Exception):
    """A request refused; str() is one line for the user."""


class NotFound(AllocationError):
    """No such request, or not the caller's."""


@dataclass(frozen=True)
class Outcome:
    text: str
    request: Request | None = None


def clock_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


class Allocator:
    def __init__(self, store: AllocationStore, settings: AllocatorSettings,
                 restriction: Callable[[str], str | None] = lambda user: None,
                 clock: Callable[[], float] = time.time,
                 usage: Callable[[float], Usage] = lambda now: Usage()) -> None:
        self.store, self.settings, self.clock = store, settings, clock
        self.usage = usage  # each account's decayed usage, for fair share (the ledger's)
        self._order: list[int] = []  # the queue's ids, highest priority first
        self._factors: dict[int, Factors] = {}
        self.restriction = restriction  # why a user may not have new GPUs now (blocked...)
        self.on_change: Callable[[], None] = lambda: None
        self.on_grant: Callable[[float], None] = lambda waited: None
        self._lock = threading.RLock()
        self._slots: dict[int, Slot] = {}
        # Reservation id -> when its node last saw a process of the holder on it (as nodes
        # report it; a node that never reported a reservation's use never idles it out).
        self._used: dict[int, float] = {}
        self._idle_told: set[int] = set()
        # (node, GPU) -> whose unreserved work runs on it, as its node last said: open mode
        # keeps everyone else off it; strict mode stops unreserved work instead. Work seen on
        # a GPU while its user held a reservation there is the reservation's (`_reserved_work`,
        # until it ends): it counts as the reservation does, and when the reservation ends
        # (expired, released idle) the GPU is given out again, that work told and stopped.
        self._in_use: dict[tuple[str, int], frozenset[str]] = {}
        self._reserved_work: set[tuple[str, int, str]] = set()
        self._live: dict[tuple[str, int], NodeGpu] = {}  # each GPU as its node last said
        with self._lock:
            now = self.clock()
            with self.store.change(now) as c:
                c.settings(zlib.crc32(f"{settings.mode} {settings.grace_seconds}".encode()))
            self._plan(now)

    # --- what nodes report -------------------------------------------------------------

    def report_gpus(self, node: str, gpus: tuple[NodeGpu, ...]) -> None:
        with self._lock:
            now = self.clock()
            with self.store.change(now) as c:
                changed = c.inventory(node, gpus)
            if changed:
                log.info("%s has %d GPUs", node, len(gpus))
            self._live = {k: v for k, v in self._live.items() if k[0] != node}
            self._live.update(((node, g.index), g) for g in gpus)
            in_use = {k: v for k, v in self._in_use.items() if k[0] != node}
            in_use.update(self._unreserved_work(node, gpus))
            moved = in_use != self._in_use
            self._in_use = in_use
            if changed or (moved and self.settings.mode == "open"):
                self._plan(now)

    def _unreserved_work(self, node: str, gpus: tuple[NodeGpu, ...]
                         ) -> dict[tuple[str, int], frozenset[str]]:
        """Whose work on each of the node's GPUs is not a reservation's; what is remembers
        it was, for as long as it runs there."""
        seen = {(node, g.index, u) for g in gpus for u in g.users}
        holders = {(node, gpu, r.user) for r in self.store.open_requests()
                   if r.state == "granted" and r.granted_node == node
                   for gpu in r.granted_gpus} if seen else set()
        self._reserved_work = {w for w in self._reserved_work if w[0] != node or w in seen}
        self._reserved_work |= seen & holders
        return {(node, g.index): users for g in gpus
                if (users := frozenset(u for u in g.users
                                       if (node, g.index, u) not in self._reserved_work))}

    def report_use(self, used: dict[int, float]) -> None:
        with self._lock:
            for id, at in used.items():
                self._used[id] = max(at, self._used.get(id, at))

    def release_idle(self, node: str, ids: tuple[int, ...]) -> None:
        """The node's idle action (exporter.idle.action: release): end its reservations `ids`,
        whose GPUs their holders' processes have held idle; other nodes' are left alone."""
        if not ids:
            return
        with self._lock:
            now = self.clock()
            with self.store.change(now) as c:
                for r in self.store.open_requests():
                    if r.state == "granted" and r.id in ids and r.granted_node == node:
                        self._end(c, r, "idle-held", f"node {node}",
                                  "its GPUs were held idle past exporter.idle.action_after_seconds")
            if c.dirty:
                self._plan(now)

    def last_used(self, id: int, default: float) -> float:
        """When the node last saw the holder use reservation `id` (`default`: never said)."""
        return self._used.get(id, default)

    def inventory(self) -> list[Gpu]:
        return [Gpu(*row) for row in self.store.inventory()]

    # --- what users ask ----------------------------------------------------------------

    def reserve(self, user: str, asked_on: str, ask: Reserve,
                preempt_by: str | None = None, why: str = "") -> Outcome:
        """A user's request; `preempt_by`: an administrator's for the user, placed over the
        work that runs on its GPUs (its owners are told, then stopped after the grace)."""
        with self._lock:
            now = self.clock()
            self._check(user, asked_on, ask)
            if ask.dry_run:
                return Outcome(self._would(user, asked_on, ask, now))
            with self.store.change(now) as c:
                id = c.add(user, asked_on, ask.count, ask.seconds, ask.model, ask.node,
                           ask.gpus, preempt_by is not None)
                if preempt_by is None:
                    c.audit(id, user, user, "queued", _asked(ask))
                else:
                    c.audit(id, user, preempt_by, "queued to preempt",
                            _asked(ask) + (f": {why}" if why else ""))
            self._plan(now, asking=id)
            request = self.store.request(id)
            assert request is not None
            return Outcome(self._describe(request, now), request)

    def _check(self, user: str, asked_on: str, ask: Reserve) -> None:
        most_gpus, longest = self.settings.limits(user)
        if ask.seconds > longest:
            raise AllocationError(f"{duration(ask.seconds)} is longer than the longest "
                                  f"reservation allowed ({duration(longest)})")
        node = ask.node if ask.node is not None or ask.gpus is None else asked_on
        want = Want(0, user, ask.count, ask.seconds, ask.model, node, ask.gpus)
        never = why_never(want, self.inventory())
        if never:
            raise AllocationError(never)
        mine = sum(r.count for r in self.store.open_requests() if r.user == user)
        if mine + ask.count > most_gpus:
            raise AllocationError(f"{ask.count} more GPUs would make {mine + ask.count} held "
                                  f"or queued; your limit is {most_gpus}")
        why = self.restriction(user)
        if why:
            raise AllocationError(f"no new GPUs while {why}")

    def release(self, user: str, id: int | None, actor: str | None = None) -> list[Outcome]:
        """End the user's request `id` (or every one of theirs): a reservation is released,
        a queued request withdrawn. Someone else's request is not found."""
        with self._lock:
            now = self.clock()
            mine = [r for r in self.store.open_requests()
                    if r.user == user and id in (None, r.id)]
            if not mine:
                raise NotFound(f"you have no reservation or queued request {id}" if id
                               else "you have no reservation or queued request")
            with self.store.change(now) as c:
                for r in mine:
                    self._end(c, r, "released" if r.state == "granted" else "withdrawn",
                              actor or user)
            self._plan(now)
            return [Outcome(f"{'released' if r.state == 'granted' else 'withdrawn'}: "
                            f"{_name(r)}", r) for r in mine]

    def cancel(self, id: int, admin: str, why: str = "") -> Outcome:
        with self._lock:
            now = self.clock()
            request = self.store.request(id)
            if request is None or request.state == "ended":
                raise NotFound(f"no open request {id}")
            with self.store.change(now) as c:
                self._end(c, request, "cancelled", admin, why)
            self._plan(now)
            return Outcome(f"cancelled: {_name(request)} of {request.user}", request)

    def _end(self, c: Changes, r: Request, reason: str, actor: str, why: str = "") -> None:
        c.end(r.id, reason)
        c.audit(r.id, r.user, actor, reason, why)
        if actor != r.user:
            words = {"cancelled": f"was cancelled by {actor}", "expired": "has expired",
                     "idle": "was released: none of your processes used it",
                     "idle-held": "was released: your processes held its GPUs idle"}
            text = f"gpuacct: your {_name(r)} {words.get(reason, reason)}"
            c.notice(r.user, self._nodes_of(r), text + (f" ({why})" if why else ""))

    # --- time passing ------------------------------------------------------------------

    def tick(self) -> None:
        """Expire what reached its end, warn before the end, grant what now fits. The queue
        is planned again only if something ended: time passing alone moves no estimate."""
        with self._lock:
            now = self.clock()
            notice = self.settings.expiry_notice_seconds
            idle_limit = self.settings.idle_release_seconds
            ended = False
            with self.store.change(now) as c:
                for r in self.store.open_requests():
                    if r.state != "granted" or r.ends is None:
                        continue
                    idle = now - self._used[r.id] if r.id in self._used else 0.0
                    if r.ends <= now:
                        self._end(c, r, "expired", "allocator")
                        ended = True
                    elif idle_limit and idle >= idle_limit:
                        self._end(c, r, "idle", "allocator",
                                  f"unused for {duration(idle)}")
                        ended = True
                    elif idle_limit and idle >= idle_limit / 2 and r.id not in self._idle_told:
                        self._idle_told.add(r.id)
                        c.audit(r.id, r.user, "allocator", "idle notice")
                        c.notice(r.user, self._nodes_of(r),
                                 f"gpuacct: your {_name(r)} has not been used for "
                                 f"{duration(idle)}; it is released in "
                                 f"{duration(idle_limit - idle)} unless you use it")
                    elif not r.warned and r.ends - now <= notice:
                        c.warned(r.id)
                        c.audit(r.id, r.user, "allocator", "expiry notice")
                        c.notice(r.user, self._nodes_of(r),
                                 f"gpuacct: your {_name(r)} ends at {clock_time(r.ends)} "
                                 f"(in {duration(r.ends - now)})")
                c.prune_notices(now - NOTICE_SECONDS)
            queued = [r for r in self.store.open_requests() if r.state == "queued"]
            reordered = [r.id for r, _ in self._ranked(queued, now)] != self._order
            if ended or reordered:  # time alone moves only the order (age, decayed usage)
                self._plan(now)
            elif c.dirty:
                self.on_change()  # notices to send

    # --- planning ----------------------------------------------------------------------

    def _plan(self, now: float, asking: int | None = None) -> None:
        """Plan the queue and grant what starts now; whoever is granted is told on their
        terminals, but the one asking right now (`asking`), who reads it in the answer."""
        ranked, slots = self._planned(now)
        queue = [r for r, _ in ranked]
        self._order = [r.id for r in queue]
        self._factors = {r.id: f for r, f in ranked}
        starting = [(r, slots[r.id]) for r in queue
                    if r.id in slots and slots[r.id].start <= now]
        if starting:
            with self.store.change(now) as c:
                for r, slot in starting:
                    c.grant(r.id, slot.node, slot.gpus, now + r.seconds)
                    where = f"GPU {','.join(map(str, slot.gpus))} on {slot.node}"
                    c.audit(r.id, r.user, "allocator", "granted", where)
                    if r.id != asking:
                        c.notice(r.user, tuple(dict.fromkeys((r.asked_on, slot.node))),
                                 f"gpuacct: your request {r.id} is granted: {where} until "
                                 f"{clock_time(now + r.seconds)}; `gpuacct run -- CMD` there")
        self._slots = {id: s for id, s in slots.items() if s.start > now}
        started = {r.id for r, _ in starting}
        self._order = [id for id in self._order if id not in started]
        for r, _ in starting:
            self.on_grant(now - r.submitted)
        if starting:
            log.info("granted %s", ", ".join(str(r.id) for r, _ in starting))
        self.on_change()

    def _planned(self, now: float, *extra: Request
                 ) -> tuple[list[tuple[Request, Factors]], dict[int, Slot]]:
        """The queue (with `extra` requests) in priority order, and its plan around what is
        granted and, in open mode, what runs."""
        open_ = self.store.open_requests()
        held = [Held(r.granted_node or "", r.granted_gpus, r.ends or now)
                for r in open_ if r.state == "granted"]
        ranked = self._ranked([r for r in open_ if r.state == "queued"] + list(extra), now)
        return ranked, plan(self.inventory(), held, [_want(r) for r, _ in ranked], now,
                            self._in_use if self.settings.mode == "open" else None)

    def _ranked(self, queue: list[Request], now: float) -> list[tuple[Request, Factors]]:
        usage = self.usage(now)
        return prioritize(queue, now, usage.decayed, lambda user: usage.accounts.get(user, user),
                          self.settings.priority)

    def _nodes_of(self, r: Request) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (r.asked_on, r.granted_node) if n))

    # --- what is shown -----------------------------------------------------------------

    def _describe(self, r: Request, now: float) -> str:
        if r.state == "granted":
            gpus = ",".join(map(str, r.granted_gpus))
            return (f"granted: reservation {r.id}, GPU {gpus} on {r.granted_node} until "
                    f"{clock_time(r.ends or now)}\n"
                    f"use them on {r.granted_node}: gpuacct run -- CMD "
                    f"(or CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={gpus} CMD)")
        entry = self._entry(r, now)
        when = (f"estimated start {clock_time(entry.estimated_start)} "
                f"(in {duration(entry.estimated_start - now)})"
                if entry.estimated_start is not None else self._waiting_on(r))
        return f"queued: request {r.id}, position {entry.position}, {when}"

    def _would(self, user: str, asked_on: str, ask: Reserve, now: float) -> str:
        """What the request would get if asked now, behind everything queued: planned, not
        kept."""
        probe = Request(PROBE, user, asked_on, ask.count, ask.seconds, ask.model, ask.node,
                        ask.gpus, now, "queued")
        ranked, slots = self._planned(now, probe)
        slot = slots.get(PROBE)
        position = [r.id for r, _ in ranked].index(PROBE) + 1
        if slot is None:
            return f"would queue at position {position}, {self._waiting_on(probe)}"
        where = f"GPU {','.join(map(str, slot.gpus))} on {slot.node}"
        if slot.start <= now:
            return f"would be granted now: {where} (nothing was reserved: --dry-run)"
        return (f"would queue at position {position}: {where}, estimated start "
                f"{clock_time(slot.start)} (in {duration(slot.start - now)}); nothing was "
                "queued (--dry-run)")

    def _waiting_on(self, r: Request) -> str:
        """Why a queued request has no estimated start: the GPUs it could have that others'
        processes hold, with no known end."""
        want = _want(r)
        busy: dict[str, list[str]] = {}
        if self.settings.mode == "open":
            for (node, index), users in sorted(self._in_use.items()):
                others = sorted(users - {r.user})
                if others and want.node in (None, node) and (want.gpus is None
                                                               or index in want.gpus):
                    busy.setdefault(", ".join(others), []).append(f"GPU {index} on {node}")
        if not busy:
            return "no estimated start yet"
        held = "; ".join(f"{', '.join(gpus)} by {users}" for users, gpus in busy.items())
        return (f"no estimated start: it waits for GPUs in use ({held}), whose work has no "
                "known end")

    def _entry(self, r: Request, now: float) -> Entry:
        slot = self._slots.get(r.id)
        factors = self._factors.get(r.id) if r.state == "queued" else None
        position = (self._order.index(r.id) + 1 if r.state == "queued" and r.id in self._order
                    else None)
        return Entry(id=r.id, user=r.user, state=r.state, count=r.count, seconds=r.seconds,
                     model=r.model, node=r.granted_node or (slot.node if slot else r.node),
                     gpus=r.granted_gpus or (slot.gpus if slot else r.gpus or ()),
                     submitted=r.submitted, started=r.started, ends=r.ends,
                     position=position,
                     estimated_start=slot.start if slot else None,
                     priority=Priority(**vars(factors)) if factors else None)

    def summary(self, user: str | None = None) -> Summary:
        """Everything open (or one user's): the reservations, then the queue in its order,
        with positions, estimated starts and each request's priority factors."""
        with self._lock:
            now = self.clock()
            open_ = [r for r in self.store.open_requests() if user in (None, r.user)]
            rank = {id: i for i, id in enumerate(self._order)}
            open_.sort(key=lambda r: (r.state == "queued",
                                      rank.get(r.id, len(rank)) if r.state == "queued" else 0,
                                      r.id))
            return Summary(now=now, entries=tuple(self._entry(r, now) for r in open_),
                           gpus=len(self.store.inventory()))

    def gpus(self, viewer: str | None = None) -> tuple[GpuStatus, ...]:
        """Every GPU of the cluster: who works on it, who reserved it until when, and whether
        a reservation would get it now. With allocator.show_holders false, `viewer` (None: an
        administrator) sees only their own name."""
        def name(user: str) -> str:
            hidden = not self.settings.show_holders and viewer is not None and user != viewer
            return ANOTHER_USER if hidden else user

        with self._lock:
            now = self.clock()
            reserved = {(r.granted_node, g): r for r in self.store.open_requests()
                        if r.state == "granted" and r.ends is not None and r.ends > now
                        for g in r.granted_gpus}
            shown = []
            for node, index, model in self.store.inventory():
                live, r = self._live.get((node, index)), reserved.get((node, index))
                users = live.users if live else ()
                shown.append(GpuStatus(
                    node=node, index=index, model=model,
                    users=tuple(dict.fromkeys(name(u) for u in users)),
                    memory_total_bytes=live.memory_total_bytes if live else None,
                    memory_used_bytes=live.memory_used_bytes if live else None,
                    utilization=live.utilization if live else None,
                    reserved_by=name(r.user) if r else None,
                    reserved_until=r.ends if r else None,
                    # strict mode stops unreserved work: only a reservation keeps a GPU
                    free=r is None and (not users or self.settings.mode == "strict")))
            return tuple(shown)

    def desired(self) -> Reservations:
        """The allocator's part of the state pushed to every node."""
        nodes: dict[str, list[ReservedGpu]] = {}
        for r in self.store.open_requests():
            if r.state == "granted" and r.granted_node and r.ends is not None:
                nodes.setdefault(r.granted_node, []).extend(
                    ReservedGpu(gpu=g, user=r.user, id=r.id, ends=r.ends)
                    for g in r.granted_gpus)
        return Reservations(mode=self.settings.mode, grace_seconds=self.settings.grace_seconds,
                            nodes={n: tuple(gs) for n, gs in sorted(nodes.items())},
                            notices=tuple(Notice(id=n.id, user=n.user, nodes=n.nodes,
                                                 text=n.text) for n in self.store.notices()))

    @property
    def version(self) -> int:
        return self.store.version


def _want(r: Request) -> Want:
    node = r.node if r.node is not None or r.gpus is None else r.asked_on
    return Want(r.id, r.user, r.count, r.seconds, r.model, node, r.gpus, r.preempt)


def _name(r: Request) -> str:
    if r.state == "granted":
        return f"reservation {r.id} (GPU {','.join(map(str, r.granted_gpus))} on " \
               f"{r.granted_node})"
    return f"queued request {r.id}"


def _asked(ask: Reserve) -> str:
    parts = [f"{ask.count} GPU for {duration(ask.seconds)}"]
    parts += [f"model {ask.model}"] if ask.model else []
    parts += [f"node {ask.node}"] if ask.node else []
    parts += [f"GPUs {','.join(map(str, ask.gpus))}"] if ask.gpus is not None else []
    return ", ".join(parts)
