"""The engine's own line protocol is influxdb-client's, byte for byte; series are named the
same through the cache as without it."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from influxdb_client.domain.write_precision import WritePrecision

from billing_engine.influx import LineFormatter, to_point
from billing_engine.series import SeriesCache, identify
from ledger import UsageLine

# Tag values as they come: spaces, commas, equals, backslashes (a trailing one too), newlines,
# quotes, any script.
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
amount = st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False,
                     allow_infinity=False)
seconds = st.decimals(min_value=0, max_value=10**7, places=9, allow_nan=False,
                      allow_infinity=False)
lines = st.builds(UsageLine, text, text, text, text, seconds, seconds, amount, seconds, amount)


@given(st.lists(lines, min_size=1, max_size=5), st.integers(0, 4_102_444_800))
def test_lines_match_influxdb_client_points(usage: list[UsageLine], window_end: int) -> None:
    formatter = LineFormatter()
    for line in usage * 2:  # the second time from the remembered tag sets
        assert formatter.line(line, window_end) == \
            to_point(line, window_end).to_line_protocol(  # type: ignore[no-untyped-call]
                precision=WritePrecision.S)


def test_the_examples_that_need_escaping() -> None:
    line = UsageLine("a b", "x,y=z", "node\\", "", Decimal(0), Decimal("12.5"), Decimal("0.1"))
    assert LineFormatter().line(line, 60) == (
        "gpuacct_usage,job=x\\,y\\=z,node=node\\ ,user=a\\ b "
        "cost=0.1,cost_micros=100000i,cpu_core_seconds=12.5,gpu_idle_seconds=0,gpu_seconds=0,"
        "idle_cost=0 60")


label_sets = st.dictionaries(st.sampled_from(["user", "job", "exported_job", "instance",
                                              "gpu", "gpu_model", "gpu_uuid"]), text)


@given(label_sets, st.sampled_from(["gpuacct_job_gpu_seconds_total",
                                    "gpuacct_job_cpu_seconds_created"]))
def test_series_cache_names_as_identify_does_in_any_label_order(
        labels: dict[str, str], name: str) -> None:
    cache = SeriesCache(limit=2)
    forward = {"__name__": name, **labels}
    backward = dict(reversed(list(forward.items())))
    for _ in range(2):
        assert cache(forward) == identify(forward) == cache(backward)
