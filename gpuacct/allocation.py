"""GPU reservations as users ask for them: the contract between `gpuacct` (the user CLI), the
node daemon that vouches for who is asking, and the allocator on the control host.

The CLI sends an `Ask` over the node's Unix socket; the daemon reads the caller's uid from the
socket (SO_PEERCRED), wraps the ask in a `Forwarded` naming the caller and signs it to the
control plane's `ALLOCATION_PATH`. The answer is an `Answer`, or `{"detail": "..."}` (the shape
of every refusal of gpuacct's JSON APIs).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from gpuacct.balance import Status
from gpuacct.config import ModelPattern
from gpuacct.policy import Desired, Model, NodeGpu, UserName

ALLOCATION_PATH = "/v1/allocation"
CANCEL_PATH = "/v1/allocation/cancel"  # administrators, with the webhook's bearer token
RELEASE_PATH = "/v1/allocation/release"  # the web page, for a user it has authenticated
BALANCE_PATH = "/v1/balance"  # a node asks for its caller's balance (signed)
MAX_GPUS = 1024
MAX_SECONDS = 366 * 86400.0  # beyond a year is a mistake, whatever the limits say
# The job a reserved GPU's time is counted and billed under, for its holder.
RESERVATION_JOB = "reservation-{id}"
RESERVATION_JOB_PREFIX = "reservation-"


class Reserve(Model):
    op: Literal["reserve"] = "reserve"
    count: int = Field(ge=1, le=MAX_GPUS)
    seconds: float = Field(gt=0, le=MAX_SECONDS)
    model: ModelPattern | None = None
    node: str | None = None
    gpus: tuple[Annotated[int, Field(ge=0)], ...] | None = None  # exactly these, on one node

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


class Show(Model):
    op: Literal["queue", "reservations"]


class Login(Model):
    """`gpuacct web`: a one-time link to the caller's page (gpuacct.login), not an allocation."""

    op: Literal["login"]


class Balance(Model):
    """`gpuacct balance`: the caller's balance, from the control plane's Prometheus
    (BALANCE_PATH), for a node that may not reach Prometheus itself; not an allocation."""

    op: Literal["balance"]


Ask = Annotated[Reserve | Release | Show | Login | Balance, Field(discriminator="op")]


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


class ReleaseFor(Model):
    """A user's release, asked through the web page (which vouches for who they are)."""

    user: UserName
    id: int = Field(ge=1)
    actor: str = Field(min_length=1, max_length=64)


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


class Summary(Desired):
    now: float
    entries: tuple[Entry, ...]
    gpus: int  # in the cluster, as the nodes reported them


class Answer(Desired):  # what nodes and the CLI are sent
    text: str
    summary: Summary | None = None
    balance: Status | None = None
    node: str = ""  # the node that answered the CLI (set by its daemon)
