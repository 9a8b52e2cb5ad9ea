"""The canary judge on its own: edge cases by hand, then properties."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from headway.analysis import (
    Judgement,
    Verdict,
    combine,
    confirm,
    judge_error_rate,
    judge_latency,
    judge_threshold,
)

P, F, INC = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


def errors(ce: int, ct: int, be: int, bt: int, *, pp: float = 1.0, alpha: float = 0.01,
           min_requests: int = 50) -> Judgement:
    return judge_error_rate(ce, ct, be, bt, max_increase_pp=pp, alpha=alpha, min_requests=min_requests)


# --- error rate ----------------------------------------------------------------------------------


def test_a_canary_far_worse_fails_and_says_why() -> None:
    j = errors(60, 300, 3, 300)
    assert j.verdict is F
    assert j.canary == pytest.approx(20.0) and j.baseline == pytest.approx(1.0)
    assert j.p_value is not None and j.p_value < 0.01
    assert "20.00% (60/300)" in j.explanation and "1.00% (3/300)" in j.explanation
    assert "z-test" in j.explanation and "p" in j.explanation


def test_no_errors_anywhere_passes_with_enough_requests_only() -> None:
    assert errors(0, 400, 0, 400).verdict is P
    small = errors(0, 60, 0, 60)
    assert small.verdict is INC
    assert "cannot tell yet" in small.explanation


def test_too_few_requests_in_either_arm_is_inconclusive_even_when_it_looks_bad() -> None:
    j = errors(40, 49, 0, 10_000)
    assert j.verdict is INC and j.p_value is None
    assert "not enough requests" in j.explanation and "need 50" in j.explanation
    assert errors(0, 10_000, 0, 49).verdict is INC
    assert errors(0, 0, 0, 0).verdict is INC  # no traffic at all


def test_every_request_failing_in_both_arms_is_within_tolerance() -> None:
    assert errors(1000, 1000, 1000, 1000).verdict is P


def test_a_canary_better_than_the_baseline_passes() -> None:
    assert errors(10, 5000, 200, 5000).verdict is P


def test_exactly_at_tolerance_never_passes_even_with_huge_samples() -> None:
    # canary 2% vs baseline 1%: exactly +1 pp
    n = 10_000_000
    j = errors(n // 50, n, n // 100, n)
    assert j.verdict is INC
    assert errors(n // 50, n, n // 100, n, pp=0.9).verdict is F
    assert errors(n // 50, n, n // 100, n, pp=1.1).verdict is P


def test_huge_samples_detect_a_small_excess_over_the_tolerance() -> None:
    n = 1_000_000
    assert errors(21_000, n, 10_000, n).verdict is F  # +1.1 pp over a 1 pp tolerance


def test_inconsistent_counts_are_inconclusive_not_an_error() -> None:
    for counts in ((5, 3, 0, 100), (0, 100, -1, 100), (0, -5, 0, 100)):
        j = errors(*counts)
        assert j.verdict is INC and "inconsistent" in j.explanation


# --- latency -------------------------------------------------------------------------------------


def lognormal(n: int, median: float, seed: int, sigma: float = 0.5) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def test_a_much_slower_canary_fails() -> None:
    j = judge_latency(lognormal(300, 150, 1), lognormal(300, 100, 2), max_increase=0.1, alpha=0.01,
                      min_samples=20)
    assert j.verdict is F
    assert "Mann-Whitney" in j.explanation and "+10%" in j.explanation
    assert j.canary is not None and j.baseline is not None and j.canary > j.baseline


def test_an_equal_canary_passes_with_enough_samples() -> None:
    j = judge_latency(lognormal(2000, 100, 3), lognormal(2000, 100, 4), max_increase=0.1, alpha=0.01,
                      min_samples=20)
    assert j.verdict is P


def test_too_few_latency_samples_are_inconclusive() -> None:
    j = judge_latency([500.0] * 19, [1.0] * 500, max_increase=0.1, alpha=0.01, min_samples=20)
    assert j.verdict is INC and "need 20" in j.explanation


def test_nans_and_infinities_are_dropped_with_a_note() -> None:
    canary = [*lognormal(50, 100, 5), math.nan, math.inf, -math.inf]
    j = judge_latency(canary, lognormal(50, 100, 6), max_increase=0.1, alpha=0.01, min_samples=20)
    assert "dropped 3 NaN/infinite samples" in j.explanation
    only_nan = judge_latency([math.nan] * 40, [1.0] * 40, max_increase=0.1, alpha=0.01, min_samples=20)
    assert only_nan.verdict is INC and only_nan.canary is None


def test_identical_constant_samples_cannot_be_judged_without_slack() -> None:
    j = judge_latency([0.0] * 30, [0.0] * 30, max_increase=0.1, alpha=0.01, min_samples=20)
    assert j.verdict is INC and "the same" in j.explanation
    # HAProxy's whole milliseconds: a 1 ms slack makes 0 ms against 0 ms a pass
    assert judge_latency([0.0] * 30, [0.0] * 30, max_increase=0.1, alpha=0.01, min_samples=20,
                         slack_ms=1.0).verdict is P


def test_latency_exactly_at_tolerance_does_not_fail_or_pass() -> None:
    baseline = lognormal(300, 100, 7)
    canary = [v * 1.1 for v in baseline]
    assert judge_latency(canary, baseline, max_increase=0.1, alpha=0.01, min_samples=20).verdict is INC


# --- threshold, combine, confirm -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "baseline", "verdict"),
    [(0.2, 0.0, F), (0.005, 0.0, P), (0.01, 0.0, P), (None, 0.0, INC), (0.0, None, INC),
     (math.nan, 0.0, INC), (0.0, math.inf, INC), (-1.0, 0.0, P)],
)
def test_threshold(canary: float | None, baseline: float | None, verdict: Verdict) -> None:
    j = judge_threshold(canary, baseline, max_increase=0.01, metric="app errors")
    assert j.verdict is verdict
    assert j.explanation.startswith("app errors: ")
    if verdict is INC:
        assert "no usable value" in j.explanation


def test_combine() -> None:
    p = judge_threshold(0.0, 0.0, max_increase=1, metric="a")
    f = judge_threshold(5.0, 0.0, max_increase=1, metric="b")
    i = judge_threshold(None, 0.0, max_increase=1, metric="c")
    assert combine([p, p]).verdict is P
    assert combine([p, i]).verdict is INC
    both = combine([i, f, p])
    assert both.verdict is F and both.canary == 5.0
    assert both.explanation == "; ".join(j.explanation for j in (i, f, p))
    assert combine([]).verdict is INC


def test_confirm_needs_consecutive_failures() -> None:
    assert confirm([], consecutive_failures=2) is INC
    assert confirm([F], consecutive_failures=2) is INC
    assert confirm([F, INC, F], consecutive_failures=2) is INC
    assert confirm([INC, F, F], consecutive_failures=2) is F
    assert confirm([F], consecutive_failures=1) is F
    assert confirm([F, P], consecutive_failures=2) is P
    with pytest.raises(ValueError):
        confirm([F], consecutive_failures=0)


# --- properties ----------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=100_000)


@st.composite
def arm(draw: st.DrawFn) -> tuple[int, int]:
    total = draw(counts)
    return draw(st.integers(min_value=0, max_value=total)), total


@given(arm(), arm(), st.integers(1, 5000), st.floats(0, 10), st.sampled_from([0.001, 0.01, 0.05]))
def test_error_rate_never_passes_on_too_few_requests(
    c: tuple[int, int], b: tuple[int, int], min_requests: int, pp: float, alpha: float
) -> None:
    assume(min(c[1], b[1]) < min_requests)
    j = judge_error_rate(*c, *b, max_increase_pp=pp, alpha=alpha, min_requests=min_requests)
    assert j.verdict is INC


@given(arm(), arm(), st.integers(1, 200), st.floats(0, 10), st.sampled_from([0.001, 0.01, 0.05]),
       st.integers(0, 1000))
def test_more_canary_errors_never_turn_a_fail_into_a_pass(
    c: tuple[int, int], b: tuple[int, int], min_requests: int, pp: float, alpha: float, extra: int
) -> None:
    before = judge_error_rate(*c, *b, max_increase_pp=pp, alpha=alpha, min_requests=min_requests)
    worse = (min(c[1], c[0] + extra), c[1])
    after = judge_error_rate(*worse, *b, max_increase_pp=pp, alpha=alpha, min_requests=min_requests)
    order = {P: 0, INC: 1, F: 2}
    assert order[after.verdict] >= order[before.verdict]
    assert before.verdict is not F or after.verdict is F


latencies = st.lists(
    st.one_of(st.floats(0, 10_000), st.just(math.nan), st.just(math.inf)), max_size=60
)


@settings(max_examples=60)
@given(latencies, latencies, st.integers(2, 40), st.floats(0, 1))
def test_latency_never_passes_on_too_few_samples(
    canary: list[float], baseline: list[float], min_samples: int, tolerance: float
) -> None:
    finite = min(sum(map(math.isfinite, canary)), sum(map(math.isfinite, baseline)))
    assume(finite < min_samples)
    j = judge_latency(canary, baseline, max_increase=tolerance, alpha=0.05, min_samples=min_samples)
    assert j.verdict is INC


@settings(max_examples=60)
@given(st.lists(st.floats(0, 1000), min_size=5, max_size=60),
       st.lists(st.floats(0, 1000), min_size=5, max_size=60),
       st.floats(0, 500), st.floats(0, 0.5))
def test_slower_canary_data_never_turns_a_fail_into_a_pass(
    canary: list[float], baseline: list[float], added: float, tolerance: float
) -> None:
    def judge(c: list[float]) -> Verdict:
        return judge_latency(c, baseline, max_increase=tolerance, alpha=0.05, min_samples=5).verdict

    before, after = judge(canary), judge([v + added for v in canary])
    order = {P: 0, INC: 1, F: 2}
    assert order[after] >= order[before]


@given(st.one_of(st.none(), st.floats(allow_nan=True)), st.one_of(st.none(), st.floats(allow_nan=True)),
       st.floats(0, 100))
def test_threshold_never_passes_on_missing_or_broken_values(
    canary: float | None, baseline: float | None, limit: float
) -> None:
    j = judge_threshold(canary, baseline, max_increase=limit, metric="m")
    if canary is None or baseline is None or not (math.isfinite(canary) and math.isfinite(baseline)):
        assert j.verdict is INC
