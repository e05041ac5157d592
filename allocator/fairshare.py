"""The queue's order: Slurm's multifactor priority with its classic fair-share factor.

A request's priority is `age_weight * min(age / age_max, 1) + fairshare_weight * F`, where
F = 2^(-U / S) for the account the request's user is charged to: U is the account's usage
(its cost in the ledger, each hour's halved every `half_life_seconds`) as a fraction of all
accounts' usage, S its shares as a fraction of the shares of every account that asks or has
used. An account that used nothing has F = 1; one that used exactly its share, 1/2. Ties go
to the request that came first. Pure: the allocator gives it the usage and the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from gpuacct.config import PrioritySettings


class Queued(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def user(self) -> str: ...

    @property
    def submitted(self) -> float: ...


Q = TypeVar("Q", bound=Queued)


@dataclass(frozen=True)
class Usage:
    """Each account's decayed usage now, and the account each user is charged to (a user
    not named: their own)."""

    decayed: Mapping[str, float] = field(default_factory=dict)
    accounts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Factors:
    """Why a request is where it is in the queue (`gpuacct queue --explain`)."""

    account: str
    age: float  # 0..1: its wait as a fraction of age_max_seconds
    fairshare: float  # 0..1: 2^(-usage/shares)
    usage: float  # the account's share of all decayed usage, 0..1
    shares: float  # the account's share of the shares, 0..1
    priority: float


def decayed(hours: Iterable[tuple[float, float]], now: float, half_life: float) -> float:
    """Usage in (time, amount) pieces, each halved every `half_life` seconds since."""
    return sum(amount * math.pow(0.5, max(now - at, 0.0) / half_life) for at, amount in hours)


def prioritize(queue: Sequence[Q], now: float, usage: Mapping[str, float],
               account_of: Callable[[str], str], settings: PrioritySettings
               ) -> list[tuple[Q, Factors]]:
    """The queue in priority order, each request with its factors. `usage`: each account's
    decayed usage."""
    accounts = {account_of(r.user) for r in queue} | {a for a, u in usage.items() if u > 0}
    total_shares = sum(settings.shares.get(a, 1.0) for a in accounts) or 1.0
    total_usage = sum(max(u, 0.0) for u in usage.values())
    ranked = []
    for r in queue:
        account = account_of(r.user)
        used = max(usage.get(account, 0.0), 0.0) / total_usage if total_usage > 0 else 0.0
        shares = settings.shares.get(account, 1.0) / total_shares
        fairshare = 2.0 ** (-used / shares)
        age = min(max(now - r.submitted, 0.0) / settings.age_max_seconds, 1.0)
        priority = settings.age_weight * age + settings.fairshare_weight * fairshare
        ranked.append((r, Factors(account, age, fairshare, used, shares, priority)))
    ranked.sort(key=lambda pair: (-pair[1].priority, pair[0].id))
    return ranked
