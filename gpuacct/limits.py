"""Usage limits: the most of a resource a user, or a Unix group's members together, may use at
once across the cluster. The billing engine exposes them as `gpuacct_limit{user,resource}` and
`gpuacct_group_limit{group,resource}` with `gpuacct_group_member{group,user}`; the alert rules
compare them with what the nodes report and block new GPU work at the limit, or throttle CPU
(rules/enforcement.rules.yml)."""

from __future__ import annotations

import grp
import logging
import pwd
import time
from collections.abc import Iterable

from gpuacct.config import BillingSettings, UsageLimits

log = logging.getLogger(__name__)


def set_limits(limits: UsageLimits) -> dict[str, float]:
    """The limits that are set (resource -> most at once)."""
    return {r: v for r in UsageLimits.model_fields if (v := getattr(limits, r)) is not None}


def usage_limits(settings: BillingSettings, user: str) -> dict[str, float]:
    """The user's limits that are set: theirs over the defaults."""
    own = settings.user_limits.get(user)
    return {**set_limits(settings.limits), **(set_limits(own) if own is not None else {})}


def group_members(group: str) -> set[str] | None:
    """The group's members as NSS has them (its member list and the users whose primary group
    it is); None if there is no such group."""
    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return None
    return set(entry.gr_mem) | {p.pw_name for p in pwd.getpwall() if p.pw_gid == entry.gr_gid}


class GroupMembers:
    """Each named Unix group's members, looked up at most once a `ttl` (NSS may be LDAP); a
    group NSS does not know is said once (naming the config key `where`) and has no members."""

    def __init__(self, groups: Iterable[str], where: str, ttl: float = 60.0) -> None:
        self.groups, self.where, self.ttl = sorted(set(groups)), where, ttl
        self._members: dict[str, set[str]] = {}
        self._at = -ttl
        self._unknown: set[str] = set()

    def __call__(self) -> dict[str, set[str]]:
        if time.monotonic() - self._at >= self.ttl:
            members = {}
            for group in self.groups:
                found = group_members(group)
                if found is None and group not in self._unknown:
                    log.warning("%s: there is no Unix group %r (it has no members)",
                                self.where, group)
                    self._unknown.add(group)
                members[group] = found or set()
            self._members, self._at = members, time.monotonic()
        return self._members


def limits_above(settings: BillingSettings, gpus: int) -> list[str]:
    """The GPU limits that no one could reach on a cluster of `gpus` GPUs (allowed: the cluster
    may grow), each said as its config key."""
    found = []
    for key, limits in [("billing.limits", settings.limits),
                        *((f"billing.user_limits.{u}", v) for u, v in settings.user_limits.items()),
                        *((f"billing.group_limits.{g}", v)
                          for g, v in settings.group_limits.items())]:
        if limits.gpus is not None and limits.gpus > gpus:
            found.append(f"{key}.gpus = {limits.gpus} is more than the {gpus} GPUs the cluster "
                         "has now: it never binds")
    return found
