"""Usage limits: the most of a resource a user may use at once across the cluster. The billing
engine exposes them as `gpuacct_limit{user,resource}`; the alert rules compare them with what
the nodes report and block new GPU work at the limit (rules/enforcement.rules.yml)."""

from __future__ import annotations

from gpuacct.config import BillingSettings, UsageLimits


def usage_limits(settings: BillingSettings, user: str) -> dict[str, float]:
    """The user's limits that are set (resource -> most at once): theirs over the defaults."""
    own = settings.user_limits.get(user)
    result: dict[str, float] = {}
    for resource in UsageLimits.model_fields:
        value = getattr(own, resource) if own is not None else None
        value = value if value is not None else getattr(settings.limits, resource)
        if value is not None:
            result[resource] = value
    return result
