"""Anomaly: the decomposition adds up exactly, on the scenario and on random periods."""

from __future__ import annotations

from decimal import Decimal, localcontext

from hypothesis import given, settings
from hypothesis import strategies as st

from ownership_ctx.reports import Source, TimeRange, anomaly, decompose, parse_period
from ownership_ctx.reports.anomaly import ModelStats, PeriodStats

D = Decimal


def test_scenario_search_week_over_week(main: Source) -> None:
    result = anomaly(main, "search", parse_period("2026-W02"), parse_period("2026-W03"))
    b, c, d = result.baseline, result.current, result.decomposition
    assert (b.requests, b.calls, b.spend) == (10, 10, D("0.04"))
    # Billed calls only (issue 14): the 6 failed attempts are free and the cache hit is no
    # call, so neither moves calls per request nor the mix.
    assert (c.requests, c.calls, c.spend, c.retries, c.fallbacks) == (20, 20, D("0.074"), 4, 2)
    assert dict(c.models) == {
        "openai/gpt-4o": ModelStats(18, 22_500, D("0.072")),
        "openai/gpt-4o-mini": ModelStats(2, 3_000, D("0.002")),
    }
    assert d.basis == "requests" and d.change == D("0.034")
    assert d.contributions == {
        "volume": D("0.04"),  # twice the requests
        "calls_per_request": D("0"),  # still one billed call per request
        "mix": D("-0.006"),  # 2 of 20 calls moved to the cheaper mini: 20 x 0.1 x -0.003
        "tokens_per_call": D("0"),
        "price": D("0"),  # prices did not change
        "unmodeled": D("0"),
    }
    assert sum(d.contributions.values()) == d.change


def test_unknown_team_and_empty_periods(main: Source) -> None:
    result = anomaly(main, "nobody", parse_period("2026-W02"), parse_period("2026-W03"))
    assert result.decomposition.change == 0
    assert all(v == 0 for v in result.decomposition.contributions.values())


def _period(requests: int, **models: tuple[int, int, str]) -> PeriodStats:
    return PeriodStats(requests, {k: ModelStats(c, t, D(s)) for k, (c, t, s) in models.items()})


def test_pure_factors() -> None:
    base = _period(100, a=(200, 20_000, "2.00"))
    # Only traffic: all of it is volume.
    d = decompose(base, _period(150, a=(300, 30_000, "3.00")))
    assert d.contributions["volume"] == D("1.00")
    assert all(v == 0 for k, v in d.contributions.items() if k != "volume")
    # Only prices.
    d = decompose(base, _period(100, a=(200, 20_000, "2.50")))
    assert d.contributions["price"] == D("0.5")
    assert all(v == 0 for k, v in d.contributions.items() if k != "price")
    # Only retries (more calls per request, same tokens per call, same price).
    d = decompose(base, _period(100, a=(300, 30_000, "3.00")))
    assert d.contributions["calls_per_request"] == D("1")
    # A new model that replaces half the calls.
    d = decompose(base, _period(100, a=(100, 10_000, "1.00"), b=(100, 10_000, "5.00")))
    assert d.contributions["mix"] == D("4") and d.change == D("4")
    # No baseline at all: everything is volume (measured in calls).
    d = decompose(_period(0), _period(0, a=(10, 100, "1")))
    assert d.basis == "calls" and d.contributions["volume"] == D("1")
    # Cost without tokens is not hidden in another factor.
    d = decompose(base, _period(100, a=(200, 20_000, "2.00"), c=(5, 0, "0.7")))
    assert d.contributions["unmodeled"] == D("0.7")


money = st.decimals(min_value=0, max_value=10_000, places=9, allow_nan=False)
model = st.tuples(st.integers(0, 10**6), st.integers(0, 10**9), money)
period = st.tuples(
    st.integers(0, 10**6), st.dictionaries(st.sampled_from("abcdef"), model, max_size=5)
)


@settings(max_examples=300, deadline=None)
@given(period, period)
def test_contributions_add_up_exactly(
    base: tuple[int, dict[str, tuple[int, int, Decimal]]],
    cur: tuple[int, dict[str, tuple[int, int, Decimal]]],
) -> None:
    def make(p: tuple[int, dict[str, tuple[int, int, Decimal]]]) -> PeriodStats:
        # A model with no calls can have no tokens or spend.
        models = {
            k: ModelStats(c, t if c else 0, s if c else D(0)) for k, (c, t, s) in p[1].items()
        }
        return PeriodStats(p[0], models)

    b, c = make(base), make(cur)
    d = decompose(b, c)
    with localcontext() as ctx:
        ctx.prec = 100  # wide enough that summing cannot round: the check is exact
        assert sum(d.contributions.values(), D(0)) == c.spend - b.spend == d.change
    assert set(d.contributions) == {
        "volume",
        "calls_per_request",
        "mix",
        "tokens_per_call",
        "price",
        "unmodeled",
    }


def test_periods() -> None:
    assert parse_period("2026-W03") == TimeRange(1768176000, 1768780800)
    assert parse_period("2026-01-12..2026-01-19") == parse_period("2026-W03")
    assert parse_period("2026-01").seconds == 31 * 86400
    assert parse_period("2026-01-12").seconds == 86400
    assert parse_period("7d", end=1768780800) == parse_period("2026-W03")
