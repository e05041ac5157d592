"""`gpuacct balance` and the web page show the same strings for the same amounts: one
formatter (gpuacct.money.shown), whatever the sign, size or the third decimal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exporter.users.balance_cli import render
from gpuacct.balance import gather
from gpuacct.promql import Sample
from gpuacct.wording import runs_out, time_left
from web.deps import fmt

AMOUNTS = ["0", "12.5", "-0.004", "-0.005", "2.675", "999.995", "1234.565", "-1234.5",
           "1000000", "-98765432.109876"]


class Fixed:
    """What Prometheus answers for one user: `balance`, thresholds, a rate."""

    def __init__(self, balance: Decimal) -> None:
        self.balance = balance

    def instant(self, query: str, at: float) -> list[Sample]:
        if "gpuacct_account_balance" in query:
            return [Sample({"account": "gat-lab"}, self.balance)]
        if "gpuacct_account_threshold" in query:
            return [Sample({"tier": "warning"}, Decimal("1250.5")),
                    Sample({"tier": "limited"}, Decimal("10"))]
        if "cost_per_hour" in query:
            return [Sample({}, self.balance / 100)]
        return []


@pytest.mark.parametrize("amount", AMOUNTS)
def test_the_cli_and_the_web_write_an_amount_alike(amount: str) -> None:
    value = Decimal(amount)
    status = gather("ann", Fixed(value), None)
    assert status.balance == fmt(value)
    assert status.cost_per_hour == fmt(value / 100)
    assert status.thresholds == {"warning": "1,250.50", "limited": "10.00"}
    assert f"balance      {fmt(value)}  (tier:" in render(status)


def test_the_strings_people_see() -> None:
    assert [fmt(Decimal(a)) for a in AMOUNTS] == [
        "0.00", "12.50", "0.00", "0.00", "2.68", "1,000.00", "1,234.56", "-1,234.50",
        "1,000,000.00", "-98,765,432.11"]


def test_a_balance_that_lasts_over_a_year_says_so() -> None:
    """A rate that rounds to 0.00 an hour once said "runs out in 6828d 16h"."""
    assert runs_out(9000.0) == "runs out in 2h 30m"
    assert runs_out(9000.0, "about ") == "runs out in about 2h 30m"
    assert runs_out(590_000_000.0) == "lasts over a year"
    assert time_left(590_000_000.0) == "over a year" and time_left(86400.0 * 3) == "3d 0h"
