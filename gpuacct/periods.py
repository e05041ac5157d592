"""Times as the ledger and its reports count them, all in UTC: days, weeks from Monday, months,
and the ways people write and read them (2026-11, 2026-11-01, 2026-11-01T12:00)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

DAY = 86400
WEEK = 7 * DAY
MONDAY = 4 * DAY  # 1970-01-01 was a Thursday: Mondays fall 4 days into each epoch week
MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def moment(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def week_start(t: float) -> int:
    """The Monday 00:00 UTC on or before `t`."""
    return int((t - MONDAY) // WEEK * WEEK + MONDAY)


def month_start(t: float) -> int:
    """The first of the month, 00:00 UTC, on or before `t`."""
    first = datetime.fromtimestamp(t, UTC)
    return int(datetime(first.year, first.month, 1, tzinfo=UTC).timestamp())


def next_month(start: int) -> int:
    first = datetime.fromtimestamp(start, UTC)
    year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def month_name(start: int) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m")


def parse_month(text: str) -> int:
    """`2026-11` as the Unix time of 2026-11-01 00:00 UTC; ValueError naming the problem."""
    found = MONTH.match(text.strip())
    if found is None or not 1 <= int(found[2]) <= 12 or int(found[1]) < 1970:
        raise ValueError(f"{text!r} is not a month like 2026-11")
    return int(datetime(int(found[1]), int(found[2]), 1, tzinfo=UTC).timestamp())


def parse_time(text: str) -> float:
    """A UTC date (`2026-11-01`) or date and time (`2026-11-01T12:00`) as a unix time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date like 2026-11-01 or 2026-11-01T12:00") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
