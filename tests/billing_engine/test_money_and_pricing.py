from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing_engine.pricing import PriceBook
from billing_engine.series import series_key
from gpuacct.config import GpuPrice, PriceVersion
from gpuacct.money import merge_versions, parse_amount
from gpuacct.store import Target
from ledger import Ledger, LedgerError
from tests.fixtures.ledger import forge

D = Decimal


@pytest.mark.parametrize("text, message", [
    ("-5", "is negative"),
    ("0", "must not be zero"),
    ("0.00", "must not be zero"),
    ("NaN", "not a finite number"),
    ("sNaN", "not a finite number"),
    ("Infinity", "not a finite number"),
    ("-inf", "not a finite number"),
    ("ten", "is not a number"),
    ("1,5", "is not a number"),
    ("", "is not a number"),
    ("10.005", "more than 2 decimal places"),
    ("1e9", "larger than the largest amount allowed"),
    ("99999999999999999999999999999999999", "larger than the largest amount allowed"),
])
def test_bad_recharge_amounts(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(text, 2, D(1_000_000), negative_allowed=False)


@pytest.mark.parametrize("text, expected", [
    ("50", D("50")), (" 12.5 ", D("12.5")), ("1.50", D("1.50")), ("1E+2", D("100")),
])
def test_good_amounts(text: str, expected: Decimal) -> None:
    assert parse_amount(text, 2, D(1_000_000), negative_allowed=False) == expected


def test_adjustments_may_be_negative() -> None:
    assert parse_amount("-12.25", 2, D(1000), negative_allowed=True) == D("-12.25")


def book() -> PriceBook:
    return PriceBook([
        PriceVersion(),
        PriceVersion(effective=datetime(2026, 12, 1, tzinfo=UTC),
                     gpu=[GpuPrice(pattern="a100", per_minute=D("0.60"))],
                     other_gpu_per_minute=D("0.15"), cpu_per_core_minute=D("0.02")),
    ])


def test_first_matching_pattern_any_case_and_the_default() -> None:
    prices = book()
    v = prices.version_at(datetime(2026, 11, 22, tzinfo=UTC).timestamp())
    assert prices.gpu_per_minute(v, "NVIDIA A100-SXM4-80GB") == D("0.50")
    assert prices.gpu_per_minute(v, "NVIDIA GeForce RTX 4090") == D("0.30")
    assert prices.gpu_per_minute(v, "NVIDIA GeForce RTX 3090") == D("0.20")
    assert prices.gpu_per_minute(v, "Tesla V100-PCIE-32GB") == D("0.40")
    assert prices.gpu_per_minute(v, "NVIDIA H100 80GB HBM3") == D("0.10")


def test_a_mig_instance_costs_its_slices_share_unless_a_pattern_names_it() -> None:
    prices = book()
    v = prices.version_at(0)
    a100 = "NVIDIA A100-SXM4-80GB"
    assert prices.gpu_per_minute(v, f"{a100} MIG 1g.10gb") == D("0.50") / 7
    assert prices.gpu_per_minute(v, f"{a100} MIG 3g.40gb") == D("0.50") * 3 / 7
    assert prices.gpu_per_minute(v, f"{a100} MIG 7g.80gb") == D("0.50")
    assert prices.gpu_per_minute(v, "NVIDIA A30 MIG 2g.12gb") == D("0.10") / 2  # of 4 slices
    assert prices.gpu_per_minute(v, "NVIDIA H100 80GB HBM3 MIG 1g.10gb") == D("0.10") / 7
    # An hour of a 1g.10gb slice: a seventh of an A100's hour, rounded once.
    assert prices.cost(v, f"{a100} MIG 1g.10gb", D(3600), D(0)) == D("4.285714")
    named = PriceBook([PriceVersion(gpu=[GpuPrice(pattern="A100", per_minute=D("0.50")),
                                         GpuPrice(pattern="A100.*MIG 1g", per_minute=D("0.09"))])])
    assert named.gpu_per_minute(0, f"{a100} MIG 1g.10gb") == D("0.09")
    assert named.gpu_per_minute(0, f"{a100} MIG 2g.20gb") == D("0.50") * 2 / 7


def test_version_in_force_at_the_time() -> None:
    prices = book()
    before = datetime(2026, 11, 30, 23, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert prices.gpu_per_minute(prices.version_at(before), "A100") == D("0.50")
    assert prices.gpu_per_minute(prices.version_at(after), "A100") == D("0.60")
    assert prices.gpu_per_minute(prices.version_at(after), "H100") == D("0.15")


def test_cost_is_exact_and_rounded_once_to_micro_units() -> None:
    prices = book()
    v = prices.version_at(0)
    # 90 GPU-seconds on an A100 at 0.50/min and 30 core-seconds at 0.01/min
    assert prices.cost(v, "A100", D(90), D(30)) == D("0.755000")
    assert prices.cost(v, "A100", D("0.000001"), D(0)) == D("0.000000")  # half to even
    assert prices.cost(v, "", D(0), D("1.5")) == D("0.000250")


def test_series_key_ignores_the_metric_name_and_sorts_labels() -> None:
    a = series_key({"__name__": "gpuacct_job_gpu_seconds_total", "user": "u", "job": "j"})
    b = series_key({"job": "j", "user": "u", "__name__": "gpuacct_job_gpu_seconds_created"})
    assert a == b and a.startswith("gpu")
    assert series_key({"__name__": "gpuacct_job_cpu_seconds_total"}).startswith("cpu")


def test_an_added_version_replaces_a_configured_one_with_the_same_effective_time() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    configured = [PriceVersion(), PriceVersion(effective=start, cpu_per_core_minute=D("0.02"))]
    added = [PriceVersion(effective=start.replace(tzinfo=None), cpu_per_core_minute=D("0.03"))]
    merged = merge_versions(configured, added)
    assert [v.cpu_per_core_minute for v in merged] == [D("0.01"), D("0.03")]


def test_the_ledger_takes_price_versions_only_from_now_on(store_target: Target) -> None:
    ledger = Ledger(store_target)
    now = datetime(2026, 11, 22, 12, tzinfo=UTC).timestamp()
    with forge(ledger) as db:
        db.execute("INSERT INTO windows VALUES ($1, $2, $3, 0, '0')", (now + 60, now, now))
    cases = [(now - 1, "cannot change the past"), (now + 30, "cannot change the past")]
    for effective, message in cases:
        with pytest.raises(LedgerError, match=message):
            ledger.add_price_version(at(effective), now, "")
    ledger.add_price_version(at(now + 60), now, "new A100 price")
    with pytest.raises(LedgerError, match="exists already"):
        ledger.add_price_version(at(now + 60), now, "")
    [(version, created, reason)] = ledger.price_versions()
    assert (version.starts(), created, reason) == (now + 60, now, "new A100 price")
    assert version.gpu[0].per_minute == D("0.75")


def at(effective: float) -> PriceVersion:
    return PriceVersion(effective=datetime.fromtimestamp(effective, UTC),
                        gpu=[GpuPrice(pattern="A100", per_minute=D("0.75"))])


def test_reserved_gpu_time_costs_the_price_times_the_reserved_factor() -> None:
    prices = PriceBook([PriceVersion()], reserved_factor=D("0.5"))
    v = prices.version_at(0)
    # 60 reserved GPU-seconds on an A100 at 0.50/min, half price; CPU time at its own price.
    assert prices.cost(v, "A100", D(60), D(60), reserved=True) == D("0.260000")
    assert prices.cost(v, "A100", D(60), D(60)) == D("0.510000")
