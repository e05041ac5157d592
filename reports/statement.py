"""Monthly statements of an account: CSV, a printable HTML page, and PDF where WeasyPrint is
installed. Every figure is the ledger's, exact: opening + postings = closing."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader, select_autoescape

from gpuacct.periods import day, moment, month_name
from ledger.records import Statement
from reports.export import as_text

Format = Literal["csv", "html", "pdf"]
_templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(["html"]))


def as_csv(statement: Statement) -> str:
    """One row per posting (a day's usage charges summed), then the totals and each member's
    usage; names people wrote are kept from running as spreadsheet formulas."""
    out = io.StringIO()
    writer = csv.writer(out)
    account = statement.account
    writer.writerow(["section", "date", "kind", "amount", "reason", "actor"])
    writer.writerow(["opening", day(statement.month_start), "", statement.opening, "", ""])
    for entry in statement.entries:
        when = day(entry.at) if entry.kind == "charges" else moment(entry.at)
        writer.writerow(["posting", when, entry.kind, entry.amount, as_text(entry.reason),
                         as_text(entry.actor)])
    writer.writerow(["charges", "", "", -statement.charges, "", ""])
    writer.writerow(["credits", "", "", statement.credits, "", ""])
    writer.writerow(["closing", day(statement.month_end - 1), "", statement.closing, "", ""])
    for user, cost in statement.members:
        writer.writerow(["member", "", as_text(user), cost, "usage charged to "
                         f"{as_text(account.name)}", ""])
    return out.getvalue()


def as_html(statement: Statement, generated: float) -> str:
    members_total = sum((cost for _, cost in statement.members), Decimal(0))
    return _templates.get_template("statement.html").render(
        s=statement, a=statement.account, month=month_name(statement.month_start),
        day=day, moment=moment, members_total=members_total, generated=moment(generated))


def as_pdf(statement: Statement, generated: float) -> bytes:
    """The HTML page printed by WeasyPrint; RuntimeError if it is not installed."""
    try:
        import weasyprint  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError("a PDF statement needs WeasyPrint: pip install 'gpuacct[pdf]' "
                           "(or take --format html and print it)") from None
    pdf: bytes = weasyprint.HTML(string=as_html(statement, generated)).write_pdf()
    return pdf


def render(statement: Statement, fmt: Format, generated: float) -> bytes:
    if fmt == "csv":
        return as_csv(statement).encode()
    if fmt == "html":
        return as_html(statement, generated).encode()
    return as_pdf(statement, generated)
