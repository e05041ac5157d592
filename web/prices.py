"""Price history and new price versions. A new version takes effect from a time not before now
(a billed window never changes price); the billing engine picks it up at its next tick."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, Field, ValidationError

from gpuacct.config import GpuPrice, PriceVersion, describe_error
from gpuacct.money import merge_versions
from ledger import LedgerError, SchemaError
from web.actions import Refused
from web.deps import Context


class PriceEntry(BaseModel, frozen=True):
    effective: datetime
    gpu: list[GpuPrice]
    other_gpu_per_minute: Decimal
    cpu_per_core_minute: Decimal
    source: str  # "config", or "web" for a version added here
    reason: str = ""
    in_force: bool = False


class PriceIn(BaseModel):
    effective: datetime | None = Field(default=None, description="UTC if no zone; empty: now")
    gpu: list[GpuPrice] = Field(default=[], max_length=100,
                                description="per GPU-minute, first matching pattern wins")
    other_gpu_per_minute: Decimal
    cpu_per_core_minute: Decimal
    reason: str = Field(min_length=1, max_length=500)


def history(ctx: Context, now: float | None = None) -> list[PriceEntry]:
    """Every version, newest first, the one in force now marked."""
    stored = ctx.view.reader.price_versions()
    added = {v.starts(): (reason, v) for v, _, reason in stored}
    versions = merge_versions(ctx.settings.billing.prices, [v for _, v in added.values()])
    now = time.time() if now is None else now
    current = max((v.starts() for v in versions if v.starts() <= now), default=None)
    entries = [PriceEntry(effective=v.effective.replace(tzinfo=v.effective.tzinfo or UTC),
                          gpu=v.gpu, other_gpu_per_minute=v.other_gpu_per_minute,
                          cpu_per_core_minute=v.cpu_per_core_minute,
                          source="web" if v.starts() in added else "config",
                          reason=added.get(v.starts(), ("", v))[0],
                          in_force=v.starts() == current)
               for v in versions]
    return entries[::-1]


def parse_gpu_lines(text: str) -> list[dict[str, str]]:
    """`pattern = price` per line, as the form has them."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        pattern, sep, price = line.rpartition("=")
        if not sep or not pattern.strip():
            raise Refused(f"GPU prices, line {number}: write it as 'pattern = price per minute'")
        lines.append({"pattern": pattern.strip(), "per_minute": price.strip()})
    return lines


def add(ctx: Context, raw: dict[str, object], actor: str) -> PriceVersion:
    """Validate and store a new version; Refused (nothing stored) names what is wrong."""
    try:
        wanted = PriceIn.model_validate(raw)
        effective = wanted.effective or datetime.fromtimestamp(int(time.time()) + 1, UTC)
        version = PriceVersion(effective=effective.replace(tzinfo=effective.tzinfo or UTC),
                               gpu=wanted.gpu, other_gpu_per_minute=wanted.other_gpu_per_minute,
                               cpu_per_core_minute=wanted.cpu_per_core_minute)
    except ValidationError as exc:
        raise Refused("; ".join(describe_error(e) for e in exc.errors())) from None
    limit = ctx.settings.billing.max_amount
    prices = [g.per_minute for g in version.gpu] + [version.other_gpu_per_minute,
                                                    version.cpu_per_core_minute]
    if any(p > limit for p in prices):
        raise Refused(f"a price above {limit} per minute is not plausible")
    try:
        ctx.writer().add_price_version(version, time.time(), wanted.reason.strip(), actor)
    except (LedgerError, SchemaError) as exc:
        raise Refused(str(exc)) from None
    return version
