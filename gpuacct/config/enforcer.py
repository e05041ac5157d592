"""`enforcer` and `allocator`: the control plane's enforcement and GPU reservations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
)

from gpuacct.config.base import ListenAddress, Section, StoreTarget


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
    # The node inventory gpuacct-admin keeps (a file_sd list, label `__gpuacct_node`): only
    # the nodes named there may sync, ask or log in; a node removed can no longer. None: any
    # node holding a key derived from auth.node_master_key.
    enrolled_nodes_file: Path | None = None
    discovery_interval_seconds: PositiveFloat = 30.0
    push_timeout_seconds: PositiveFloat = 5.0
    max_backoff_seconds: PositiveFloat = 30.0
    # A request body over this is refused (413) before it is read: Alertmanager's deliveries
    # (bounded by the receiver's max_alerts) and nodes' syncs are far smaller.
    max_body_bytes: Annotated[int, Field(ge=65536)] = 4 * 2**20


class AllocationLimits(Section):
    max_gpus: Annotated[int, Field(ge=1)] | None = None  # held and queued at once
    max_seconds: PositiveFloat | None = None  # the longest reservation


class PrioritySettings(Section):
    """The queue's order (Slurm's multifactor priority): a request's priority is
    age_weight x its age (up to age_max_seconds, as a fraction) plus fairshare_weight x its
    account's fair-share factor 2^(-usage/shares), where usage is the account's cost in the
    ledger decayed with half_life_seconds, as a fraction of every account's, and shares its
    configured shares as a fraction of every account's that asks or used (default 1 each).
    Ties go to the earlier request; backfill never delays a request ahead. With age_weight
    above fairshare_weight nobody starves: a request that waited age_max_seconds is ahead of
    every one that waited less than (1 - fairshare_weight / age_weight) of that, whatever the
    usage, so newcomers never pass it."""

    age_weight: NonNegativeFloat = 10000.0
    age_max_seconds: PositiveFloat = 86400.0
    fairshare_weight: NonNegativeFloat = 5000.0
    half_life_seconds: PositiveFloat = 7 * 86400.0
    shares: dict[str, PositiveFloat] = {}  # account -> shares


class AllocatorSettings(Section):
    """GPU reservations and their queue, kept and served by gpuacct-enforcer."""

    # Default: allocator.sqlite3 beside enforcer.database (in PostgreSQL: the same database).
    database: StoreTarget | None = None
    # open: reservations are optional, an unreserved GPU is first come, first served.
    # strict: a GPU process needs a reservation of its user on that GPU.
    mode: Literal["open", "strict"] = "open"
    grace_seconds: NonNegativeFloat = 60.0  # told, then stopped: someone else's reserved GPU
    # `gpuacct gpus` and the web's GPUs page name who works on and reserved each GPU; false:
    # each user sees their own name only ("another user" for the rest).
    show_holders: bool = True
    max_gpus: Annotated[int, Field(ge=1)] = 8  # per user, held and queued at once
    max_seconds: PositiveFloat = 7 * 86400.0  # the longest reservation
    user_limits: dict[str, AllocationLimits] = {}
    expiry_notice_seconds: NonNegativeFloat = 600.0  # the holder is told this long before
    # Released when no process of the holder used it for this long (told at half); 0: never.
    idle_release_seconds: NonNegativeFloat = 1800.0
    check_interval_seconds: PositiveFloat = 5.0  # expiries and idle releases are looked at
    priority: PrioritySettings = PrioritySettings()

    def limits(self, user: str) -> tuple[int, float]:
        own = self.user_limits.get(user, AllocationLimits())
        return (own.max_gpus or self.max_gpus,
                own.max_seconds if own.max_seconds is not None else self.max_seconds)
