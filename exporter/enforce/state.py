"""What the node has in force, kept on disk so a restarted exporter carries on where it was."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ValidationError

from gpuacct.files import write_atomically
from gpuacct.policy import Allowances, ReservedGpu, UserPolicy

log = logging.getLogger(__name__)
ProcKey = tuple[int, int]  # (pid, start ticks): one process, never a later one with its pid


class Applied(BaseModel):
    """What is in force for one user on this node."""

    uid: int
    policy: UserPolicy = UserPolicy()
    block_since: float | None = None
    baseline: set[ProcKey] = set()  # running when the block applied: left alone
    kill_since: float | None = None
    quota: int | None = None  # percent of one CPU, as applied
    limited: set[ProcKey] = set()  # processes already put under the quota


class Stopping(BaseModel):
    """A process sent SIGTERM, to get SIGKILL at `deadline` if it is still there."""

    user: str
    # pid, start ticks, uid, name, and the container (its full id) if it runs in one
    target: tuple[int, int, int, str] | tuple[int, int, int, str, str]
    deadline: float
    alert: str


class Intruder(BaseModel):
    """A process on a GPU reserved for someone else (or, strict, not for its user): told at
    `since`, stopped when the grace is over."""

    user: str
    gpu: int
    since: float


class ActuatorState(BaseModel):
    version: int = -1
    users: dict[str, Applied] = {}
    stopping: list[Stopping] = []
    # This node's part of the reservations: what is reserved, and how strictly.
    mode: str = "open"
    reservation_grace: float = 60.0
    reserved: tuple[ReservedGpu, ...] = ()
    intruders: dict[str, Intruder] = {}  # by "pid:start ticks"
    told: list[int] = []  # the notices already told (their ids)
    idle_released: list[int] = []  # reservations this node asked to end for being held idle
    allowances: Allowances = Allowances()  # the GPU allowances, as the enforcer last sent
    # Per user, the GPU processes let in; None until the first cycle, which lets in whatever
    # runs then (an upgrade or a first start never stops work that was already running).
    admitted: dict[str, list[ProcKey]] | None = None


class StateFile:
    """The state as JSON in one file, replaced atomically; unusable state is said, not fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ActuatorState:
        try:
            return ActuatorState.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return ActuatorState()
        except (OSError, ValidationError) as exc:
            log.error("actuator state %s unusable (%s): waiting for the enforcer's policy",
                      self.path, exc)
            return ActuatorState()

    def save(self, state: ActuatorState) -> None:
        try:
            write_atomically(self.path, state.model_dump_json().encode(), mode=0o600)
        except OSError as exc:
            log.error("cannot save actuator state to %s: %s", self.path, exc)
