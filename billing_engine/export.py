"""CSV exports of usage lines and transactions for a date range: UTF-8, exact decimals."""

from __future__ import annotations

import csv
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from billing_engine.engine import iso
from billing_engine.ledger import Ledger

USAGE_HEADER = ["window_start", "window_end", "user", "job", "node", "gpu_model",
                "gpu_seconds", "cpu_core_seconds", "cost"]
TRANSACTIONS_HEADER = ["id", "at", "user", "kind", "amount", "balance_after", "reason",
                       "window_end"]


def parse_time(text: str) -> float:
    """A UTC date (`2026-11-01`) or date and time (`2026-11-01T12:00`) as a unix time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date like 2026-11-01 or 2026-11-01T12:00") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def rows(db: sqlite3.Connection, what: str, start: float, end: float) -> list[list[str]]:
    """Usage lines of windows ending in [start, end), or transactions made in it."""
    if what == "usage":
        found = db.execute(
            "SELECT w.window_start, u.window_end, u.user, u.job, u.node, u.gpu_model, "
            "u.gpu_seconds, u.cpu_core_seconds, u.cost "
            "FROM usage_lines u JOIN windows w USING (window_end) "
            "WHERE u.window_end >= ? AND u.window_end < ? "
            "ORDER BY u.window_end, u.user, u.job, u.node, u.gpu_model", (start, end))
        return [[iso(r[0]), iso(r[1]), *r[2:]] for r in found]
    found = db.execute(
        "SELECT id, at, user, kind, amount, balance_after, reason, window_end FROM transactions "
        "WHERE at >= ? AND at < ? ORDER BY id", (start, end))
    return [[str(r[0]), iso(r[1]), *r[2:7], iso(r[7]) if r[7] is not None else ""]
            for r in found]


def write_csv(out: TextIO, what: str, data: list[list[str]]) -> None:
    writer = csv.writer(out)
    writer.writerow(USAGE_HEADER if what == "usage" else TRANSACTIONS_HEADER)
    writer.writerows(data)


def write(ledger: Ledger, what: str, start_text: str, end_text: str,
          output: Path | None) -> int:
    start, end = parse_time(start_text), parse_time(end_text)
    if end <= start:
        raise ValueError(f"--to {end_text} is not after --from {start_text}")
    data = rows(ledger.db, what, start, end)
    if output is None:
        write_csv(sys.stdout, what, data)
    else:
        with output.open("w", encoding="utf-8", newline="") as f:
            write_csv(f, what, data)
    return 0
