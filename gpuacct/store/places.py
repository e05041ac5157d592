"""Where each of the control host's stores is, from the config, in one place: the ledger
(billing.ledger) with the jobs store beside it, and the enforcer's (enforcer.database) with the
allocator's (unless allocator.database says otherwise) and the notices' beside it. In
PostgreSQL "beside" is the same database: each store keeps a schema of its own."""

from __future__ import annotations

from gpuacct.config import Settings
from gpuacct.store import Target, beside

JOBS = "jobs.sqlite3"
ALLOCATOR = "allocator.sqlite3"
NOTICES = "notices.sqlite3"


def jobs(settings: Settings) -> Target:
    return beside(settings.billing.ledger, JOBS)


def allocator(settings: Settings) -> Target:
    return settings.allocator.database or beside(settings.enforcer.database, ALLOCATOR)


def notices(settings: Settings) -> Target:
    return beside(settings.enforcer.database, NOTICES)


def control_stores(settings: Settings) -> dict[str, Target]:
    """Every store by name, in the order a backup takes them (the money first)."""
    return {"ledger": settings.billing.ledger, "jobs": jobs(settings),
            "enforcer": settings.enforcer.database, "allocator": allocator(settings),
            "notices": notices(settings)}
