"""Amounts typed by people (CLI, web forms): exact decimals, or a message saying what is wrong;
amounts as people are shown them; and the price versions in force."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from gpuacct.config import PriceVersion


def parse_amount(text: str, decimals: int, maximum: Decimal, *,
                 negative_allowed: bool) -> Decimal:
    """The amount as a Decimal; ValueError with a message for a person otherwise."""
    raw = text.strip()
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    if amount == 0:
        raise ValueError("the amount must not be zero")
    if amount < 0 and not negative_allowed:
        raise ValueError(f"{text!r} is negative: a recharge adds money (use adjust to take "
                         "money away)")
    if abs(amount) > maximum:
        raise ValueError(f"{text!r} is larger than the largest amount allowed ({maximum})")
    if amount != amount.quantize(Decimal(1).scaleb(-decimals)):
        raise ValueError(f"{text!r} has more than {decimals} decimal places")
    return amount


CENT = Decimal("0.01")


def shown(amount: Decimal) -> str:
    """Money as people read it, the same string in `gpuacct balance`, the web page and the
    notices: two decimals (half to even, as the ledger's sums), thousands apart: 1,234.50;
    never -0.00."""
    cents = amount.quantize(CENT)
    return f"{cents if cents else abs(cents):,}"


def merge_versions(configured: list[PriceVersion],
                   added: list[PriceVersion]) -> list[PriceVersion]:
    """The config's versions and those added in the ledger; an added one replaces a configured
    one with the same effective time."""
    return sorted({v.starts(): v for v in [*configured, *added]}.values(),
                  key=PriceVersion.starts)
