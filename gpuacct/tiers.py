"""The enforcement tiers: one definition for the billing engine, the web, the CLIs and the
node. An account is in the most severe tier whose threshold its balance is below, else "ok"."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from gpuacct.config import BillingSettings

Tier = Literal["ok", "warning", "limited", "exhausted"]
Limit = Literal["warning", "limited", "exhausted"]  # the tiers that have a threshold
SEVERITY: tuple[Limit, ...] = ("exhausted", "limited", "warning")  # most severe first
LIMITS: tuple[Limit, ...] = get_args(Limit)
HEALTHY: Tier = "ok"
RANK: dict[str, int] = {tier: rank for rank, tier in enumerate((*SEVERITY, HEALTHY))}


def tier_of(balance: Decimal, limits: Mapping[Limit, Decimal] | Mapping[str, Decimal]) -> Tier:
    """The most severe tier whose threshold the balance is below, else "ok"."""
    return next((t for t in SEVERITY if t in limits and balance < limits[t]), HEALTHY)


def thresholds(settings: BillingSettings, account: str) -> dict[Limit, Decimal]:
    """An account's thresholds: its overrides (`user_thresholds` for a personal account, its
    own under `accounts` for a group's) over the configured ones."""
    overrides = [settings.user_thresholds.get(account)]
    if account in settings.accounts:
        overrides.append(settings.accounts[account].thresholds)
    result: dict[Limit, Decimal] = {}
    for limit in LIMITS:
        values = [getattr(o, limit) for o in overrides if o is not None]
        result[limit] = next((v for v in values if v is not None),
                             getattr(settings.thresholds, limit))
    return result


def account_tier(settings: BillingSettings, account: str, balance: Decimal) -> Tier:
    return tier_of(balance, thresholds(settings, account))

