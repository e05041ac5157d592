"""CSV of usage lines, transactions or the waste report in a date range, as
`gpuacct-billing export` writes it."""

from __future__ import annotations

import io
from typing import cast, get_args

from fastapi import HTTPException
from fastapi.responses import Response

from gpuacct.periods import parse_time
from ledger import Export
from reports import export
from web.deps import Context

USER_COLUMN = {"usage": 2, "transactions": 2, "waste": 1}  # the user, or the account


def csv_response(ctx: Context, what: str, start_text: str, end_text: str,
                 user: str | None = None) -> Response:
    """`user`: only that user's usage and waste, and their own account's transactions."""
    if what not in get_args(Export):
        raise HTTPException(404, "export usage.csv, transactions.csv or waste.csv")
    kind = cast(Export, what)
    try:
        start, end = parse_time(start_text), parse_time(end_text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if end <= start:
        raise HTTPException(400, f"to={end_text} is not after from={start_text}")
    out = io.StringIO()
    rows = ctx.view.reader.export_rows(kind, start, end)
    if user is not None:
        rows = (r for r in rows if r[USER_COLUMN[kind]] == user)
    export.write_csv(out, kind, rows)
    whose = f"{user}-" if user else ""
    name = f"gpuacct-{whose}{what}-{start_text}-{end_text}.csv".replace(":", "")
    return Response(out.getvalue().encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
