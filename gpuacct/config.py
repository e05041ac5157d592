"""The one YAML config file: a validated section per service.

`load_settings()` reads `--config FILE`, else `$GPUACCT_CONFIG`, else runs on defaults. Any
problem raises `ConfigError`, whose message has one line per problem naming the key path, the
bad value and what was expected, so a service can print it and exit before doing anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    Tag,
    ValidationError,
    model_validator,
)

from gpuacct.patterns import check_pattern
from gpuacct.secrets import SECRET_ERROR, PasswordHash, Rotating, Secret

CONFIG_ENV = "GPUACCT_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; str() is one line per problem."""


def split_listen_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` to (host, port); an empty host means every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _check_listen_address(value: str) -> str:
    split_listen_address(value)
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false: for a key whose choices include "off", it is."""
    return "off" if value is False else value


OFF = BeforeValidator(_yaml_off)
Port = Annotated[int, Field(gt=0, lt=65536)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NvmlSettings(Section):
    # auto: NVIDIA's driver if present, else CPU-only. fake: GPUs described by `fake_file`
    # (tests). demo: clearly labelled simulated GPUs for `gpuacct-stack --demo`. off: CPU-only.
    backend: Annotated[Literal["auto", "fake", "demo", "off"], OFF] = "auto"
    fake_file: Path | None = None
    # demo: only these users' processes are put on a simulated GPU by GPUACCT_DEMO_GPU (the
    # stack's demo names its own two); none: any user's.
    demo_users: list[str] | None = None


class AmdSmiSettings(Section):
    # AMD SMI is asked at most this often (a faster sampler reuses the last reading); its
    # RETRY and BUSY answers keep the previous reading too.
    min_interval_seconds: NonNegativeFloat = 1.0
    fake_file: Path | None = None  # GPUs described by this file (tests), not AMD SMI


class DcmiSettings(Section):
    # Where Ascend's driver puts the library; a bare name is looked up by the loader.
    library: str = "libdcmi.so"
    fake_file: Path | None = None  # NPUs described by this file (tests), not DCMI


Backend = Literal["nvml", "amdsmi", "dcmi"]


def _backend_list(value: Any) -> Any:
    if isinstance(value, list) and len(set(value)) != len(value):
        raise ValueError("a backend is named twice")
    return value


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


class ExporterSettings(Section):
    listen_address: ListenAddress = "0.0.0.0:9835"
    interval_seconds: PositiveFloat = 5.0
    min_uid: Annotated[int, Field(ge=0)] = 1000
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
    backends: Annotated[Literal["auto"] | list[Backend], AfterValidator(_backend_list)] = "auto"
    nvml: NvmlSettings = NvmlSettings()
    amdsmi: AmdSmiSettings = AmdSmiSettings()
    dcmi: DcmiSettings = DcmiSettings()
    idle: IdleSettings | None = IdleSettings()  # null: no idle-GPU counting
    actuator: ActuatorSettings = ActuatorSettings()


Money = Annotated[Decimal, Field(allow_inf_nan=False)]
Price = Annotated[Decimal, Field(allow_inf_nan=False, ge=0)]


# A regular expression searched in a GPU model's name, any case, by RE2 (prices,
# reservations): gpuacct.patterns.
ModelPattern = Annotated[str, AfterValidator(check_pattern)]


class GpuPrice(Section):
    pattern: ModelPattern
    per_minute: Price


class PriceVersion(Section):
    """Prices in force from `effective` on; a window is priced by the version at its start."""

    effective: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    gpu: list[GpuPrice] = [
        GpuPrice(pattern="A100", per_minute=Decimal("0.50")),
        GpuPrice(pattern="RTX 4090", per_minute=Decimal("0.30")),
        GpuPrice(pattern="RTX 3090", per_minute=Decimal("0.20")),
        GpuPrice(pattern="V100", per_minute=Decimal("0.40")),
    ]
    other_gpu_per_minute: Price = Decimal("0.10")
    cpu_per_core_minute: Price = Decimal("0.01")

    def starts(self) -> float:
        """`effective` as a Unix time; a time written without a zone is UTC."""
        return self.effective.replace(tzinfo=self.effective.tzinfo or UTC).timestamp()


class Thresholds(Section):
    """Balances below these put an account in the tier: warning, limited, exhausted. The
    warning is a quarter of the default opening balance: a new account is not warned until it
    has used three quarters of it (150 minutes of an A100 at the default prices)."""

    warning: Money = Decimal(25)
    limited: Money = Decimal(10)
    exhausted: Money = Decimal(0)


class ThresholdOverride(Section):
    warning: Money | None = None
    limited: Money | None = None
    exhausted: Money | None = None


class UsageLimits(Section):
    """The most a user may use at once, across the cluster; null: no limit. At the limit, new
    GPU work is blocked (what runs goes on) until the use drops below it again."""

    gpus: Annotated[int, Field(ge=0)] | None = None
    gpu_memory_bytes: Annotated[int, Field(ge=0)] | None = None
    # CPU cores busy at once: near it, the user's CPU is limited to it (a throttle).
    cpu_cores: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


AccountName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")]


class AccountSettings(Section):
    """A group account that pays for its members (who are charged to it instead of their own
    account), kept in the ledger as the config says; each change counts from when the billing
    engine sees it, and windows already started keep the membership they began with."""

    owner: str = ""  # who answers for it (a PI); shown on statements
    # Members: these users, or a Unix group's (from NSS); neither: the config does not manage its
    # members (`gpuacct-billing account add-member`, and `unknown_users: account:<name>`).
    members: list[str] | None = None
    unix_group: str | None = None
    member_monthly_limits: dict[str, Money] = {}  # the most a member may spend a month (UTC)
    opening_balance: Money = Decimal(0)
    thresholds: ThresholdOverride = ThresholdOverride()

    @model_validator(mode="after")
    def _one_source(self) -> AccountSettings:
        if self.members is not None and self.unix_group is not None:
            raise ValueError("give members or unix_group, not both")
        for user, limit in self.member_monthly_limits.items():
            if limit <= 0:
                raise ValueError(f"member_monthly_limits.{user}: {limit} is not more than 0")
            if self.members is not None and user not in self.members:
                raise ValueError(f"member_monthly_limits.{user}: {user} is not a member")
        return self


UNASSIGNED_ACCOUNT = "unassigned"


def _check_unknown_users(value: str) -> str:
    name = value.removeprefix("account:")
    if value not in ("open", "refuse") and (not value.startswith("account:") or not name):
        raise ValueError("expected open, refuse or account:<name>")
    return value


def _check_postgres_url(value: str) -> str:
    if re.search(r"://[^/@]*:[^/@]*@", value):
        raise ValueError("the URL holds a password: give it in PGPASSWORD or a password file "
                         "(PGPASSFILE, ~/.pgpass), which libpq reads")
    return value


def _store_target(value: Any) -> Any:
    """A postgresql:// URL stays a string (and must hold no password); anything else is a
    file's path."""
    if isinstance(value, str) and re.match(r"^postgres(ql)?://", value):
        return _check_postgres_url(value)
    if isinstance(value, str):
        return Path(value)
    return value


# Where a store is: a SQLite file, or a PostgreSQL URL.
StoreTarget = Annotated[str | Path, BeforeValidator(_store_target)]


def _one_or_more_urls(value: Any) -> Any:
    urls = [value] if isinstance(value, str) else value
    if isinstance(urls, list) and not urls:
        raise ValueError("give at least one Prometheus URL")
    return urls


def _check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


class JobSettings(Section):
    """What the control plane keeps of the nodes' jobs (the web's Jobs view)."""

    # A running job whose node has not answered for this long is `lost` (its node may be
    # down, or only its exporter); it is reconciled when the node answers again.
    lost_after_seconds: PositiveFloat = 300.0
    keep_days: Annotated[int, Field(ge=1)] = 90  # finished jobs are forgotten after this


class BillingSettings(Section):
    listen_address: ListenAddress = "0.0.0.0:9836"
    # One Prometheus, or the replicas of an HA pair (and a long-term store such as
    # VictoriaMetrics, Thanos or Mimir): read in turn, the next one when one does not answer.
    prometheus_url: Annotated[list[Annotated[str, AfterValidator(_check_url)]],
                              BeforeValidator(_one_or_more_urls)] = ["http://127.0.0.1:19090"]
    # Labels that tell replicas apart (external labels, dedup labels): dropped from a series'
    # identity, so that one counter read through two replicas is one series.
    replica_labels: list[str] = ["replica", "prometheus_replica", "__replica__"]
    # A SQLite file, or a PostgreSQL URL (postgresql://gpuacct@db.example/gpuacct); its password
    # from PGPASSWORD or a password file (PGPASSFILE, ~/.pgpass), never here.
    ledger: StoreTarget = Path("/var/lib/gpuacct/ledger.sqlite3")
    window_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    # A window is billed this long after it ends: at least two scrape intervals, so every
    # node's sample at the window's end has arrived.
    settle_seconds: NonNegativeFloat = 30.0
    max_backfill_seconds: PositiveFloat = 86400.0
    query_timeout_seconds: PositiveFloat = 10.0
    lease_seconds: PositiveFloat = 30.0
    # Usage lines (one per user, job, node and GPU model each window) older than this many
    # days are rolled up into one per day; null: keep every line.
    usage_line_days: Annotated[int, Field(ge=1)] | None = 90
    # The nodes' jobs, kept in jobs.sqlite3 beside the ledger (the schema `jobs` of its
    # PostgreSQL database); null: not kept.
    jobs: JobSettings | None = JobSettings()
    opening_balance: Money = Decimal(100)
    trial_mode: bool = False  # record usage and cost, debit nothing
    amount_decimals: Annotated[int, Field(ge=0, le=6)] = 2
    max_amount: Annotated[Decimal, Field(allow_inf_nan=False, gt=0)] = Decimal(1_000_000)
    prices: list[PriceVersion] = [PriceVersion()]
    # Reserved GPU time (the job reservation-<id>) costs the GPU's price times this.
    reserved_price_factor: Price = Decimal(1)
    thresholds: Thresholds = Thresholds()
    user_thresholds: dict[str, ThresholdOverride] = {}
    limits: UsageLimits = UsageLimits()  # for every user; gpuacct_limit{user,resource}
    user_limits: dict[str, UsageLimits] = {}  # per user, over `limits`
    # Per Unix group: the most its members use at once together (as Slurm's GrpTRES), beside
    # each member's own limits; gpuacct_group_limit{group,resource}, members from NSS.
    group_limits: dict[str, UsageLimits] = {}
    accounts: dict[AccountName, AccountSettings] = {}  # group accounts, by name
    # Usage of a user the ledger has no account or membership for: open (their own account,
    # with opening_balance), account:<name> (charged to that account, which must be one of
    # `accounts` without members), refuse (recorded on the "unassigned" account, blocked, and
    # the administrators alerted).
    unknown_users: Annotated[str, AfterValidator(_check_unknown_users)] = "open"

    @model_validator(mode="after")
    def _accounts_agree(self) -> BillingSettings:
        if UNASSIGNED_ACCOUNT in self.accounts:
            raise ValueError(f"accounts.{UNASSIGNED_ACCOUNT}: the name is the ledger's own "
                             "account for unknown users")
        seen: dict[str, str] = {}
        for name, account in self.accounts.items():
            for user in account.members or ():
                if user in seen:
                    raise ValueError(f"accounts: {user} is a member of both {seen[user]} and "
                                     f"{name}; a user is charged to one account")
                seen[user] = name
        if self.unknown_users.startswith("account:"):
            target = self.accounts.get(self.unknown_users.removeprefix("account:"))
            if target is None:
                raise ValueError(f"unknown_users: {self.unknown_users!r} names no account "
                                 "under billing.accounts")
            if target.members is not None or target.unix_group is not None:
                raise ValueError(f"unknown_users: {self.unknown_users!r} names an account "
                                 "whose members the config sets; unknown users join it")
        return self


class InfluxV1Settings(Section):
    version: Literal[1] = 1
    url: str = "http://127.0.0.1:18086"
    database: str = "gpuacct"
    username: str | None = None
    password: Secret | None = None


class InfluxV2Settings(Section):
    version: Literal[2]
    url: str
    org: str
    bucket: str
    token: Secret


def _influx_version(raw: Any) -> str:
    version = raw.get("version", 1) if isinstance(raw, Mapping) else getattr(raw, "version", 1)
    return "@v2" if version == 2 else "@v1"


InfluxSettings = Annotated[
    Annotated[InfluxV1Settings, Tag("@v1")] | Annotated[InfluxV2Settings, Tag("@v2")],
    Discriminator(_influx_version),
]


class AuthSettings(Section):
    """Shared secrets; each is a literal, {env: NAME} or {file: PATH}."""

    # On a node: its own key (`gpuacct-enforcer node-key NAME` prints it). On the enforcer:
    # the master key every node's key is derived from. Each: one, or two during a rotation.
    node_key: Rotating | None = None
    node_master_key: Rotating | None = None
    # Alertmanager's bearer token to the enforcer, and the web's. Two during a rotation: the
    # web presents the first, the enforcer accepts either.
    webhook_token: Rotating | None = None
    admin_password_hash: PasswordHash | None = None
    max_clock_skew_seconds: PositiveFloat = 30.0  # signed node requests older than this fail

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "node_hmac_key" in raw:
            raise ValueError("node_hmac_key, one key shared by every node, was replaced by a "
                             "key per node: give the enforcer auth.node_master_key and each "
                             "node auth.node_key (gpuacct-enforcer node-key NAME prints it)")
        return raw


class EnforcerSettings(Section):
    listen_address: ListenAddress = "0.0.0.0:9837"
    # Desired state and audit log: a SQLite file, or a PostgreSQL URL (as billing.ledger; the
    # allocator and the notices then keep their tables in the same database).
    database: StoreTarget = Path("/var/lib/gpuacct/enforcer.sqlite3")
    # Days the alert deliveries (kept to tell a resent alert from a new one; a firing alert's
    # stay) and the audit log are kept; null: for ever.
    delivery_days: Annotated[int, Field(ge=1)] | None = 30
    audit_days: Annotated[int, Field(ge=1)] | None = 365
    # An active enforcer and a standby on one database (PostgreSQL, or a shared SQLite file):
    # the standby takes over this long after the active one stops renewing its lease.
    lease_seconds: PositiveFloat = 15.0
    nodes: list[str] = []  # node base URLs (http://node:9835); empty: ask Prometheus
    prometheus_url: str = "http://127.0.0.1:19090"
    exporter_job: str = "gpuacct-exporter"  # the scrape job whose targets are the nodes
    discovery_interval_seconds: PositiveFloat = 30.0
    push_timeout_seconds: PositiveFloat = 5.0
    max_backoff_seconds: PositiveFloat = 30.0
    # A request body over this is refused (413) before it is read: Alertmanager's deliveries
    # (bounded by the receiver's max_alerts) and nodes' syncs are far smaller.
    max_body_bytes: Annotated[int, Field(ge=65536)] = 4 * 2**20


class AllocationLimits(Section):
    max_gpus: Annotated[int, Field(ge=1)] | None = None  # held and queued at once
    max_seconds: PositiveFloat | None = None  # the longest reservation


class AllocatorSettings(Section):
    """GPU reservations and their queue, kept and served by gpuacct-enforcer."""

    # Default: allocator.sqlite3 beside enforcer.database (in PostgreSQL: the same database).
    database: StoreTarget | None = None
    # open: reservations are optional, an unreserved GPU is first come, first served.
    # strict: a GPU process needs a reservation of its user on that GPU.
    mode: Literal["open", "strict"] = "open"
    grace_seconds: NonNegativeFloat = 60.0  # told, then stopped: someone else's reserved GPU
    max_gpus: Annotated[int, Field(ge=1)] = 8  # per user, held and queued at once
    max_seconds: PositiveFloat = 7 * 86400.0  # the longest reservation
    user_limits: dict[str, AllocationLimits] = {}
    expiry_notice_seconds: NonNegativeFloat = 600.0  # the holder is told this long before
    # Released when no process of the holder used it for this long (told at half); 0: never.
    idle_release_seconds: NonNegativeFloat = 1800.0
    check_interval_seconds: PositiveFloat = 5.0  # expiries and idle releases are looked at

    def limits(self, user: str) -> tuple[int, float]:
        own = self.user_limits.get(user, AllocationLimits())
        return (own.max_gpus or self.max_gpus,
                own.max_seconds if own.max_seconds is not None else self.max_seconds)


class WebAdministrator(Section):
    """A named administrator of the web page: admin (everything), finance (recharge, adjust,
    prices, statements, the audit) or manager of group accounts (sees their members, sets the
    members' monthly limits; no money)."""

    password_hash: PasswordHash  # from `gpuacct-web hash-password`
    role: Literal["admin", "finance", "manager"]
    accounts: list[str] = []  # a manager's accounts

    @model_validator(mode="after")
    def _accounts_for_managers(self) -> WebAdministrator:
        if self.role == "manager" and not self.accounts:
            raise ValueError("a manager needs the accounts they manage (accounts: [...])")
        if self.role != "manager" and self.accounts:
            raise ValueError(f"only a manager has accounts; an {self.role} sees every one")
        return self


class LdapSettings(Section):
    """Logins checked by binding to the site's directory as the user (ldap3)."""

    url: str  # ldap://host:389 or ldaps://host:636
    user_dn: str = "uid={user},ou=people,dc=example,dc=org"  # the DN a user binds as
    start_tls: bool = False
    timeout_seconds: PositiveFloat = 5.0
    mail_attribute: str = "mail"  # the user's address for notices, read at login
    groups_base: str | None = None  # where the groups of `roles` are
    # A member (memberUid or member) of one of these groups logs in with its role.
    roles: dict[str, Literal["admin", "finance"]] = {}

    @model_validator(mode="after")
    def _user_in_dn(self) -> LdapSettings:
        if "{user}" not in self.user_dn:
            raise ValueError("user_dn must contain {user}, e.g. uid={user},ou=people,dc=...")
        if not re.match(r"^ldaps?://", self.url):
            raise ValueError("url must start with ldap:// or ldaps://")
        if self.roles and not self.groups_base:
            raise ValueError("roles need groups_base, where the groups are")
        return self


class PamSettings(Section):
    """Logins checked by PAM with the control host's own accounts (python-pam)."""

    service: str = "login"


class WebAuthSettings(Section):
    """How users log in to the web page themselves (administrators: web.administrators)."""

    ldap: LdapSettings | None = None
    pam: PamSettings | None = None
    # `gpuacct web` on a node prints a one-time link, valid this long.
    link_seconds: Annotated[float, Field(gt=0, le=86400)] = 600.0


class WebSettings(Section):
    """gpuacct-web: reads the billing ledger (billing.ledger), posts recharges into it."""

    listen_address: ListenAddress = "0.0.0.0:9838"
    prometheus_url: str = "http://127.0.0.1:19090"  # burn rates
    enforcer_url: str | None = None  # what is enforced and why (with auth.webhook_token)
    # Signs session cookies; two during a rotation (the first signs, either is accepted);
    # none: a new one at every start.
    session_secret: Rotating | None = None
    # The page's address as users reach it: the one-time links and the notices point there.
    public_url: str | None = None
    # A reverse proxy that authenticates users may name them in `user_header`; the header is
    # believed only from these addresses, and from none unless set.
    trusted_proxies: list[str] = []
    user_header: str = "X-Remote-User"
    page_size: Annotated[int, Field(ge=1, le=1000)] = 50
    login_failures_per_minute: Annotated[int, Field(ge=1)] = 5
    # A request body over this (a form, a JSON request) is refused (413) before it is read.
    max_body_bytes: Annotated[int, Field(ge=65536)] = 2**20
    # Named administrators with roles, by login name; auth.admin_password_hash is the one
    # called "admin", with the admin role.
    administrators: dict[AccountName, WebAdministrator] = {}
    auth: WebAuthSettings = WebAuthSettings()


class NoticeChannel(Section):
    """Where notices go: an Apprise URL (mailto://, json://, slack://, feishu://, wecombot://,
    dingtalk://, ...) in which {user} and {address} are replaced for each user."""

    url: Secret  # may hold a password: mailto://user:pass@smtp.example.org
    address: str | None = None  # the user's {address} unless they set one: "{user}@example.org"


class NotificationSettings(Section):
    """Notices to users by e-mail and chat, sent by gpuacct-enforcer through Apprise."""

    channels: dict[AccountName, NoticeChannel] = {}
    default_channels: list[str] | None = None  # a user's channels unless they choose; none: all
    per_user_per_hour: Annotated[int, Field(ge=1)] = 20  # more wait for the next hour
    retry_max_seconds: PositiveFloat = 600.0  # failures retried with backoff up to this
    check_interval_seconds: PositiveFloat = 2.0

    @model_validator(mode="after")
    def _known_channels(self) -> NotificationSettings:
        unknown = set(self.default_channels or ()) - set(self.channels)
        if unknown:
            raise ValueError(f"default_channels names no channel: {', '.join(sorted(unknown))}")
        return self


class ClientSettings(Section):
    """gpuacct-balance, run by users on a node."""

    prometheus_url: str = "http://127.0.0.1:19090"
    timeout_seconds: PositiveFloat = 2.0


class TlsClientSettings(Section):
    """How this process's HTTPS requests (to Prometheus, InfluxDB, the enforcer, the nodes)
    verify the server, as Prometheus' `tls_config`: `ca_file` is trusted beside the system's
    CAs; `cert_file` and `key_file` are a client certificate, for listeners that ask for one."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsClientSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class StackSettings(Section):
    state_dir: Path = Path("/var/lib/gpuacct/stack")
    host: str = "127.0.0.1"
    prometheus_port: Port = 19090
    alertmanager_port: Port = 19093
    influxdb_port: Port = 18086
    exporter_port: Port = 19835
    billing_port: Port = 19836
    enforcer_port: Port = 19837  # where Alertmanager delivers enforcement alerts
    web_port: Port = 19838
    # gpuacct's listeners serve TLS from a throwaway CA made under state_dir/tls, which
    # Prometheus, Alertmanager and the services verify; false (or off): plain HTTP.
    tls: bool = True
    rules_dir: Path | None = None  # default: the rules shipped in the `rules` package
    scrape_interval_seconds: PositiveFloat = 15.0
    prometheus_binary: str = "prometheus"
    alertmanager_binary: str = "prometheus-alertmanager"
    influxd_binary: str = "influxd"


class Settings(Section):
    exporter: ExporterSettings = ExporterSettings()
    billing: BillingSettings = BillingSettings()
    influxdb: InfluxSettings = InfluxV1Settings()
    enforcer: EnforcerSettings = EnforcerSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    web: WebSettings = WebSettings()
    client: ClientSettings = ClientSettings()
    auth: AuthSettings = AuthSettings()
    notifications: NotificationSettings = NotificationSettings()
    stack: StackSettings = StackSettings()
    tls_client_config: TlsClientSettings = TlsClientSettings()


def _key_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("@"):  # union tags are not keys
            path += f".{part}" if path else part
    return path or "(top level)"


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `key.path: what is wrong` (config files and HTTP bodies alike)."""
    where = _key_path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"{where}: missing, a value is required"
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    msg = str(error["msg"]).removeprefix("Value error, ")
    # A whole section: the message says what; a secret: its value is never shown.
    if isinstance(error["input"], Mapping | list) or kind == SECRET_ERROR:
        return f"{where}: {msg}"
    shown = repr(error["input"])
    return f"{where}: {shown if len(shown) <= 80 else shown[:77] + '...'} is not valid: {msg}"


def settings_from_mapping(data: Any, source: str = "config") -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(f"{source}: {describe_error(e)}" for e in exc.errors(include_url=False))
        ) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from `path`, else `$GPUACCT_CONFIG`, else the defaults."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        return Settings()
    source = str(chosen)
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    return settings_from_mapping(data, source)
