"""`exporter`: the node's daemon, its actuator and idle-GPU counting."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    create_model,
    field_validator,
    model_validator,
)

from gpuacct.config.base import OFF, ListenAddress, Section
from gpuacct.config.devices import VENDORS


def _backend_list(value: Any) -> Any:
    if isinstance(value, list):
        unknown = [name for name in value if name not in VENDORS]
        if unknown:
            raise ValueError(f"{unknown[0]} is no backend: expected auto, or a list of "
                             f"{', '.join(VENDORS)}")
        if len(set(value)) != len(value):
            raise ValueError("a backend is named twice")
    return value


DEVICES = "@devices"  # where the vendors' sections are gathered; `@` keeps it out of key paths
T = TypeVar("T", bound=Section)


class ActuatorSettings(Section):
    """The node side of enforcement, inside gpuacct-exporter (needs `auth.node_key`)."""

    enabled: bool = True
    node_name: str | None = None  # default: this host's name
    enforcer_url: str | None = None  # pull the policy from here; none: wait for pushes
    pull_interval_seconds: PositiveFloat = 60.0
    kill_grace_seconds: NonNegativeFloat = 30.0  # SIGTERM, then SIGKILL after this
    protected_users: list[str] = []  # never signalled or throttled, whatever the policy says
    dry_run: bool = False  # log what would be done, do nothing
    # How CPU is limited: auto picks systemd, else cgroup v2, else cgroup v1.
    cpu_limiter: Annotated[Literal["auto", "systemd", "cgroup2", "cgroup1", "off"], OFF] = "auto"
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # Which GPUs' device nodes each user may open, held by the kernel (a blocked user's new
    # GPU program fails at start; a reserved GPU is closed to all but its holder): auto uses
    # the cgroup v1 devices controller where it is mounted, else a cgroup v2 device program;
    # off leaves it to the kill path.
    device_gating: Annotated[Literal["auto", "cgroup1", "cgroup2", "off"], OFF] = "auto"
    device_root: Path = Path("/dev")  # where the GPUs' device nodes are
    # Our groups' parent under each cgroup controller: one folder name.
    cgroup_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")] = "gpuacct"
    # Where systemd keeps each login's user-<uid>.slice in cgroup v2 (gated there too).
    user_slices: Annotated[str, Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,3}$"
    )] = "user.slice"
    hook_dir: Path = Path("/run/gpuacct/users")  # one file per user for the login hook
    # Where users' `gpuacct` commands reach this daemon (who asks is read from the socket).
    user_socket: Path | None = Path("/run/gpuacct/user.sock")
    state_file: Path = Path("/var/lib/gpuacct/actuator-state.json")


class IdleSettings(Section):
    """A job's GPU processes holding at least `min_memory_bytes` of a GPU at under
    `max_utilization_ratio` for `after_seconds` are idle-holding it."""

    min_memory_bytes: Annotated[int, Field(ge=0)] = 1 << 30
    max_utilization_ratio: Annotated[float, Field(ge=0, le=1)] = 0.01
    after_seconds: NonNegativeFloat = 1800.0
    # This long after a job became idle-holding (the rules told its user then), the node acts:
    # none; release: a reservation held idle ends (its GPUs go to the queue); stop: the job's
    # processes on that GPU are stopped as a kill is (SIGTERM, SIGKILL after the grace, never
    # root, system or protected users).
    action: Literal["none", "release", "stop"] = "none"
    action_after_seconds: NonNegativeFloat = 1800.0


class ContainerSettings(Section):
    """Whose a container's processes are: a GPU process in a container runs as root, so its
    user comes from the container (gpuacct.user, stamped by the proxy socket; then the
    labels and environment variables named here; then a rootless engine's owning user)."""

    # The node's Docker (or Podman) API, read for a container's labels and image, and asked
    # to stop containers; null: no engine is asked.
    docker_socket: Path | None = Path("/run/docker.sock")
    user_labels: list[Annotated[str, Field(min_length=1, max_length=256)]] = []
    user_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]] = []
    # Where users reach Docker through gpuacct: the engine's API, with every container it
    # creates labelled gpuacct.user=<the caller>. The engine's own socket stays root's.
    proxy_socket: Path | None = None
    proxy_group: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}\$?$")] = "docker"

    @model_validator(mode="after")
    def _proxy_needs_engine(self) -> ContainerSettings:
        if self.proxy_socket is not None and self.docker_socket is None:
            raise ValueError("proxy_socket passes requests on to docker_socket, which is null")
        return self


class UnattributedSettings(Section):
    """GPU time of root and of containers nobody could be found for: counted always, billed to
    billing.unattributed_account where that is set, and with `stop` its containers stopped."""

    action: Literal["none", "stop"] = "none"


class ExporterSettings(Section):
    listen_address: ListenAddress = "0.0.0.0:9835"
    interval_seconds: PositiveFloat = 5.0
    min_uid: Annotated[int, Field(ge=0)] = 1000
    # None: every user from min_uid. A list: only these users' processes are metered, billed
    # and acted on (gpuacct-stack --demo: its own demo users, never anyone else's work).
    only_users: list[str] | None = None
    job_sources: list[Literal["env", "container", "session"]] = ["env", "container", "session"]
    job_env_vars: list[str] = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "GPUACCT_JOB"]
    # How k jobs on one GPU share its time: split (1/k each), full (each the whole time),
    # memory (in proportion to each job's GPU memory).
    gpu_share: Literal["split", "full", "memory"] = "split"
    # Job ids and names come from users: longer ones are cut (with a hash, so they stay
    # apart), and a user's jobs on this node beyond max_jobs_per_user share one "overflow" job.
    max_job_id_length: Annotated[int, Field(ge=16, le=1024)] = 128
    max_jobs_per_user: Annotated[int, Field(ge=1)] = 64
    retention_seconds: NonNegativeFloat = 900.0
    # A finished job stays until every scraper has scraped it since it ended, at most this
    # long (a Prometheus away for hours still gets its last increment).
    max_retention_seconds: NonNegativeFloat = 86400.0
    state_file: Path = Path("/var/lib/gpuacct/exporter-state.json")
    # Which device libraries to read: auto is NVML, and AMD SMI and DCMI where their library
    # is on the node; or a list of nvml, amdsmi, dcmi. Devices are numbered in this order.
    backends: Annotated[Literal["auto"] | list[str], AfterValidator(_backend_list)] = "auto"
    # Each vendor's own section (exporter.nvml, exporter.amdsmi, ...): gpuacct.config.devices.
    devices: dict[str, Section] = Field(default_factory=dict, alias="@devices")
    idle: IdleSettings | None = IdleSettings()  # null: no idle-GPU counting
    actuator: ActuatorSettings = ActuatorSettings()
    containers: ContainerSettings = ContainerSettings()
    unattributed: UnattributedSettings = UnattributedSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _gather_devices(cls, raw: Any) -> Any:
        """Every registered vendor's section, given or not, goes to `devices`."""
        if not isinstance(raw, Mapping) or DEVICES in raw:
            return raw
        rest = {k: v for k, v in raw.items() if k not in VENDORS}
        return {**rest, DEVICES: {name: raw.get(name, {}) for name in VENDORS}}

    @field_validator("devices", mode="plain")
    @classmethod
    def _vendor_sections(cls, value: Any) -> dict[str, Section]:
        sections = create_model("DeviceSections", __base__=Section, **{  # type: ignore[call-overload]
            name: (vendor.settings, vendor.settings()) for name, vendor in VENDORS.items()})
        checked = sections.model_validate(value)
        return {name: getattr(checked, name) for name in VENDORS}

    def device(self, name: str, kind: type[T]) -> T:
        """A vendor's section, as the model its registry entry names."""
        section = self.devices.get(name) or VENDORS[name].settings()
        if not isinstance(section, kind):
            raise TypeError(f"exporter.{name} is a {type(section).__name__}, not {kind.__name__}")
        return section
