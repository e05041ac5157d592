"""The enforcement policy: what the enforcer wants every node to do, per user.

The contract between `gpuacct-enforcer` and the actuator in `gpuacct-exporter`. A user's policy
combines their firing alerts, each dimension at its most restrictive: blocked if any alert
blocks, the lowest CPU quota of any throttle, kill if any alert kills. Kill implies block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# A Unix login name as gpuacct accepts one in a label, a path or a form (POSIX's portable
# characters, plus the `@` and `.` of directory-service names), at most 64 characters.
USER_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"
USER_NAME = re.compile(USER_NAME_PATTERN)
UserName = Annotated[str, Field(pattern=USER_NAME_PATTERN)]

POLICY_PATH = "/v1/policy"  # on the node: the enforcer PUTs the policy here
SYNC_PATH = "/v1/sync"  # on the enforcer: a node POSTs its reports, gets the policy back
NODE_PATH = "/v1/node"  # on the node: its name, which the enforcer derives its key from

Action = Literal["notify", "block", "throttle", "kill"]
ACTIONS: tuple[Action, ...] = ("notify", "block", "throttle", "kill")
# What became of something a node did: done, only logged (dry run), refused by the safety
# rules, the process was gone already, it failed, or this node cannot do it.
Result = Literal["ok", "dry_run", "refused", "gone", "failed", "unsupported"]
# What a node reports it did, for the audit log. A new kind is added here first and reaches
# the enforcer before the nodes that send it (the enforcer refuses a sync naming an unknown one).
NodeActionKind = Literal[
    "block", "unblock",  # new GPU work refused, and allowed again
    "kill", "terminate", "kill_after_grace",  # the decision, each SIGTERM, a SIGKILL after it
    "throttle", "unthrottle",  # a CPU quota set and lifted
    "notify",  # told on the user's terminals
    "release",  # a reservation held idle given up
    "policy",  # a policy the node refused (its safety rules)
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Desired(BaseModel):
    """Part of the desired state the enforcer sends: a node ignores a field it does not know,
    so a control host one version ahead of its nodes keeps them working."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# The allowance a reason stands for (its alert's `allowance` label): the nodes hold the user to
# it themselves, at the moment a GPU process appears (Allowances).
AllowanceKind = Literal["gpus", "gpu_memory_bytes"]


class Reason(Desired):
    """One firing alert behind a user's policy, as the user is told about it."""

    alert: str
    action: Action
    summary: str = ""
    description: str = ""
    cpu_quota_percent: int | None = None
    allowance: AllowanceKind | None = None


class UserPolicy(Desired):
    block: bool = False
    cpu_quota_percent: int | None = Field(default=None, ge=1)  # of one CPU, like systemd's
    kill: bool = False
    reasons: tuple[Reason, ...] = ()


class ReservedGpu(Desired):
    """A GPU of a node reserved for `user` by reservation `id` until `ends`."""

    gpu: int = Field(ge=0)
    user: UserName
    id: int
    ends: float


class Notice(Desired):
    """Something a user is told on their terminals, once, on each of `nodes`."""

    id: int
    user: UserName
    nodes: tuple[str, ...]
    text: str


class Reservations(Desired):
    """The allocator's part of the desired state: what is reserved, per node name, and what
    users are to be told about their reservations."""

    mode: Literal["open", "strict"] = "open"
    grace_seconds: float = Field(default=60.0, ge=0)
    nodes: dict[str, tuple[ReservedGpu, ...]] = {}
    notices: tuple[Notice, ...] = ()


class Allowance(Desired):
    """The most a user's GPU processes may hold at once, cluster-wide; None: no limit
    (billing.limits, billing.user_limits)."""

    gpus: int | None = Field(default=None, ge=0)
    gpu_memory_bytes: int | None = Field(default=None, ge=0)

    def holds(self, kind: AllowanceKind) -> bool:
        return getattr(self, kind) is not None


class Held(Desired):
    """What a user's GPU processes hold on one node: GPUs (or MIG instances) and memory."""

    gpus: int = Field(default=0, ge=0)
    gpu_memory_bytes: int = Field(default=0, ge=0)

    def __add__(self, other: Held) -> Held:
        return Held(gpus=self.gpus + other.gpus,
                    gpu_memory_bytes=self.gpu_memory_bytes + other.gpu_memory_bytes)


class Allowances(Desired):
    """What the nodes hold users to at the moment a GPU process appears: each user's
    allowance (`default` for a user not named), and what each user holds on each node as the
    nodes last said in their syncs. Outside the version: the config and the nodes' holdings
    change it, and a node takes it from every answer. Two nodes admitting a user's processes
    at once can pass the allowance by what one sync interval lets in."""

    default: Allowance = Allowance()
    users: dict[str, Allowance] = {}
    held: dict[str, dict[str, Held]] = {}  # user -> node -> held

    def of(self, user: str) -> Allowance:
        return self.users.get(user, self.default)

    def elsewhere(self, user: str, node: str) -> Held:
        """What the user holds on the other nodes."""
        return sum((h for n, h in self.held.get(user, {}).items() if n != node), Held())


class NodePolicy(Desired):
    """The full desired state; a higher version replaces a lower one whole."""

    version: int = Field(default=0, ge=0)
    users: dict[str, UserPolicy] = {}
    reservations: Reservations = Reservations()
    allowances: Allowances = Allowances()


class NodeAction(Model):
    """Something a node did (or would have done, in dry-run), reported back for the audit."""

    id: str  # unique, so a report delivered twice is audited once
    at: float
    user: str
    action: NodeActionKind
    result: Result
    detail: str = ""
    alert: str = ""


class NodeGpu(Model):
    index: int = Field(ge=0)
    model: str
    # Whose processes run on it now: placement grants no one a GPU another user works on.
    users: tuple[str, ...] = ()
    # What `gpuacct gpus` shows, as of the node's last report.
    memory_total_bytes: int | None = Field(default=None, ge=0)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    utilization: float | None = Field(default=None, ge=0, le=1)


class SyncRequest(Model):
    """A node asks for the policy, reports what it did since it last reported and which GPUs
    it has (None: not known yet, keep what it said before)."""

    node: str
    version: int = Field(ge=0)
    actions: tuple[NodeAction, ...] = ()
    gpus: tuple[NodeGpu, ...] | None = None
    # Per reservation held on this node: when a process of its holder last ran on it.
    reservation_use: dict[int, float] = {}
    # Reservations on this node to end because their GPUs were held idle (exporter.idle).
    release_idle: tuple[int, ...] = ()
    # What each user's GPU processes hold on this node now (None: not said; keep the last).
    held: dict[str, Held] | None = None


class PushResult(Model):
    """A node's answer to a pushed policy."""

    node: str
    version: int
    actions: tuple[NodeAction, ...] = ()


def combine(reasons: Iterable[Reason]) -> UserPolicy:
    """One user's policy from the reasons (firing alerts) that apply to them."""
    ordered = tuple(sorted(set(reasons), key=lambda r: (ACTIONS.index(r.action), r.alert)))
    quotas = [r.cpu_quota_percent for r in ordered
              if r.action == "throttle" and r.cpu_quota_percent is not None]
    kill = any(r.action == "kill" for r in ordered)
    return UserPolicy(block=kill or any(r.action == "block" for r in ordered),
                      cpu_quota_percent=min(quotas) if quotas else None,
                      kill=kill, reasons=ordered)
