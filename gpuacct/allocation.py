"""GPU reservations as users ask for them: the contract between `gpuacct` (the user CLI), the
node daemon that vouches for who is asking, and the allocator on the control host.

The CLI sends an `Ask` over the node's Unix socket; the daemon reads the caller's uid from the
socket (SO_PEERCRED), wraps the ask in a `Forwarded` naming the caller and signs it to the
control plane's `ALLOCATION_PATH`. The answer is an `Answer`, or `{"detail": "..."}` (the shape
of every refusal of gpuacct's JSON APIs).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpuacct.balance import Status
from gpuacct.config import ModelPattern
from gpuacct.policy import Desired, Model, NodeGpu, UserName
from gpuacct.wording import duration

ALLOCATION_PATH = "/v1/allocation"
CANCEL_PATH = "/v1/allocation/cancel"  # administrators, with the webhook's bearer token
PREEMPT_PATH = "/v1/allocation/preempt"  # administrators: a reservation over running work
RELEASE_PATH = "/v1/allocation/release"  # the web page, for a user it has authenticated
BALANCE_PATH = "/v1/balance"  # a node asks for its caller's balance (signed)
MAX_GPUS = 1024
MAX_SECONDS = 366 * 86400.0  # beyond a year is a mistake, whatever the limits say
# The job a reserved GPU's time is counted and billed under, for its holder.
RESERVATION_JOB = "reservation-{id}"
RESERVATION_JOB_PREFIX = "reservation-"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:\d+[smhd])+$")


class UsageError(ValueError):
    """A bad argument of a reservation, said in one line (exit 2)."""


def parse_duration(text: str) -> float:
    value = text.strip().lower()
    if not _DURATION.match(value):
        raise UsageError(f"--for {text!r}: expected a duration such as 30m, 2h, 1d or 1h30m")
    seconds = float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", value)))
    if seconds <= 0:
        raise UsageError(f"--for {text!r}: a reservation lasts longer than nothing")
    if seconds > MAX_SECONDS:
        raise UsageError(f"--for {text!r}: at most {duration(MAX_SECONDS)}")
    return seconds


def parse_gpus(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(f"--gpus {text!r}: expected GPU indices such as 0,1")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus):
        raise UsageError(f"--gpus {text!r}: a GPU is named twice")
    return gpus


class Reserve(Model):
    op: Literal["reserve"] = "reserve"
    count: int = Field(ge=1, le=MAX_GPUS)
    seconds: float = Field(gt=0, le=MAX_SECONDS)
    model: ModelPattern | None = None
    node: str | None = None
    gpus: tuple[Annotated[int, Field(ge=0)], ...] | None = None  # exactly these, on one node
    dry_run: bool = False  # what it would get, and when: nothing queued

    @model_validator(mode="after")
    def _gpus_are_the_count(self) -> Reserve:
        if self.gpus is not None:
            if len(set(self.gpus)) != len(self.gpus):
                raise ValueError("a GPU is named twice")
            if len(self.gpus) != self.count:
                raise ValueError(f"{len(self.gpus)} GPUs named but {self.count} asked for")
        return self


class Release(Model):
    op: Literal["release"] = "release"
    id: int | None = Field(default=None, ge=1)  # none: every one of the caller's


class Hold(Model):
    """A waiting run's hold on its request (`gpuacct run --gpus N`): the node daemon makes
    the request (`reserve`) and answers on the same connection, or takes over request `id`
    (after the daemon restarted), then keeps the connection open and withdraws or releases
    the request when it closes, however the waiting `gpuacct` ended: no request is ever left
    without a hold. `keep` sent before closing leaves it (granted elsewhere)."""

    op: Literal["hold"]
    id: int | None = Field(default=None, ge=1)
    reserve: Reserve | None = None

    @model_validator(mode="after")
    def _one_request(self) -> Hold:
        if (self.id is None) == (self.reserve is None):
            raise ValueError("a hold names a request (id) or makes one (reserve), not both")
        return self


class Show(Model):
    op: Literal["queue", "reservations", "gpus"]


class Login(Model):
    """`gpuacct web`: a one-time link to the caller's page (gpuacct.login), not an allocation."""

    op: Literal["login"]


class Balance(Model):
    """`gpuacct balance`: the caller's balance, from the control plane's Prometheus
    (BALANCE_PATH), for a node that may not reach Prometheus itself; not an allocation."""

    op: Literal["balance"]


Ask = Annotated[Reserve | Release | Show | Login | Balance | Hold, Field(discriminator="op")]


class Caller(Model):
    """Who asks, as the node vouches for it: the uid the kernel gave, and its name there."""

    node: str
    uid: int = Field(ge=0)
    user: UserName


class Forwarded(Model):
    caller: Caller
    ask: Ask
    gpus: tuple[NodeGpu, ...] | None = None  # the node's GPUs, so the allocator knows them


class Cancel(Model):
    id: int = Field(ge=1)
    admin: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=200)


class Preempt(Model):
    """An administrator's reservation for `user` on a node, granted over the work running on
    its GPUs: their owners are told, then stopped after the grace. Audited with `reason`."""

    user: UserName
    admin: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=200)
    ask: Reserve

    @model_validator(mode="after")
    def _on_a_node(self) -> Preempt:
        if self.ask.node is None:
            raise ValueError("a preemption names its node")
        return self


class ReleaseFor(Model):
    """A user's release, asked through the web page (which vouches for who they are)."""

    user: UserName
    id: int = Field(ge=1)
    actor: str = Field(min_length=1, max_length=64)


class Priority(Desired):
    """Why a queued request is where it is (allocator.fairshare): `gpuacct queue --explain`."""

    account: str
    age: float
    fairshare: float
    usage: float
    shares: float
    priority: float


class Entry(Desired):
    id: int
    user: str
    state: str  # queued, granted
    count: int
    seconds: float
    model: str | None
    node: str | None  # granted: where; queued: where it is planned, or asked for
    gpus: tuple[int, ...]
    submitted: float
    started: float | None
    ends: float | None
    position: int | None  # in the queue, from 1
    estimated_start: float | None
    priority: Priority | None = None  # a queued request's factors


class Summary(Desired):
    now: float
    entries: tuple[Entry, ...]
    gpus: int  # in the cluster, as the nodes reported them


class GpuStatus(Desired):
    """One GPU as `gpuacct gpus` shows it: what its node last reported, and the allocator's
    reservation on it."""

    node: str
    index: int
    model: str
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization: float | None = None
    users: tuple[str, ...] = ()  # whose processes run on it
    reserved_by: str | None = None
    reserved_until: float | None = None
    free: bool = False  # no one's process on it, not reserved: a reservation gets it now


GPUS_PATH = "/v1/allocation/gpus"  # every GPU, for the web page (bearer token)
ANOTHER_USER = "another user"  # a holder's name where allocator.show_holders is false


class Gpus(Desired):
    now: float
    gpus: tuple[GpuStatus, ...]


class Answer(Desired):  # what nodes and the CLI are sent
    text: str
    id: int | None = None  # the request a reserve made
    summary: Summary | None = None
    gpus: tuple[GpuStatus, ...] = ()
    balance: Status | None = None
    node: str = ""  # the node that answered the CLI (set by its daemon)
