"""`billing`: windows, prices, tiers, limits and group accounts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    model_validator,
)

from gpuacct.config.base import (
    AccountName,
    ListenAddress,
    ModelPattern,
    Money,
    Price,
    Section,
    StoreTarget,
    _check_url,
    _one_or_more_urls,
)


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
    # GPU time of root and of containers no user was found for (the nodes'
    # gpuacct_unattributed_gpu_seconds_total) is billed as this user's, on the job
    # `unattributed-<container>`; null: counted and alerted on, billed to nobody.
    unattributed_account: AccountName | None = None

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
