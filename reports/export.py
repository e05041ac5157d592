"""CSV exports for a date range: usage lines, transactions, or the waste report (each user's
weeks that begin in the range, with their idle-held GPU time and its cost). UTF-8, exact
decimals."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from gpuacct.periods import parse_time
from ledger import Export, LedgerReader

USAGE_HEADER = ["window_start", "window_end", "user", "job", "node", "gpu_model",
                "gpu_seconds", "cpu_core_seconds", "cost", "gpu_idle_seconds", "idle_cost",
                "account"]
WASTE_HEADER = ["week_start", "user", "gpu_seconds", "gpu_idle_seconds", "idle_share", "cost",
                "idle_cost", "idle_cost_share"]
TRANSACTIONS_HEADER = ["id", "at", "account", "kind", "amount", "balance_after", "reason",
                       "window_end", "actor"]


TEXT_COLUMNS = {"usage": (2, 3, 4, 5, 11), "transactions": (2, 3, 6, 8), "waste": (1,),
                "statement": (1, 3, 4)}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_text(cell: str) -> str:
    """A cell a spreadsheet would run as a formula (`=HYPERLINK(...)`, `+1`, `@SUM`), made text
    with a leading apostrophe (OWASP's advice on CSV injection)."""
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def write_csv(out: TextIO, what: Export, data: Iterable[list[str]]) -> None:
    writer = csv.writer(out)
    writer.writerow({"usage": USAGE_HEADER, "waste": WASTE_HEADER}.get(what, TRANSACTIONS_HEADER))
    text = TEXT_COLUMNS[what]
    writer.writerows([as_text(c) if i in text and isinstance(c, str) else c
                      for i, c in enumerate(row)] for row in data)


def write(ledger: LedgerReader, what: Export, start_text: str, end_text: str,
          output: Path | None) -> int:
    start, end = parse_time(start_text), parse_time(end_text)
    if end <= start:
        raise ValueError(f"--to {end_text} is not after --from {start_text}")
    data = ledger.export_rows(what, start, end)
    if output is None:
        write_csv(sys.stdout, what, data)
    else:
        with output.open("w", encoding="utf-8", newline="") as f:
            write_csv(f, what, data)
    return 0
