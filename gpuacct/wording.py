"""How a user is told what is enforced on them and how long their money lasts: the same words
in gpuacct-balance, the login greeting and the web page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}d {hours}h" if days else f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


YEAR = 365 * 86400.0


def time_left(seconds: float) -> str:
    """A balance's time left at the current rate, for a column: a duration or "over a year"."""
    return "over a year" if seconds > YEAR else duration(seconds)


def runs_out(seconds: float, about: str = "") -> str:
    """When a balance runs out at the current rate: "runs out in 2h 30m", or "lasts over a
    year" (a rate that rounds to 0.00 would otherwise say "6828d 16h")."""
    return "lasts over a year" if seconds > YEAR else f"runs out in {about}{duration(seconds)}"


def memory(size: float) -> str:
    """Bytes as people read GPU memory: 40 GiB, 512 MiB, 1.5 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def enforced(policy: Mapping[str, Any] | None) -> list[str]:
    """What a user policy (a UserPolicy's fields, or a node's hook file) does, in words."""
    if not policy:
        return []
    lines = []
    if policy.get("kill"):
        lines.append("your GPU processes are being stopped")
    elif policy.get("block"):
        lines.append("new GPU work is blocked (what was running goes on)")
    if policy.get("cpu_quota_percent"):
        lines.append(f"CPU limited to {policy['cpu_quota_percent']}% of one core")
    if policy.get("dry_run") and lines:
        lines = [f"{line} [dry run: not enforced]" for line in lines]
    return lines
