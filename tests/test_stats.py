"""The statistics behind the feedback report, against published reference values.

References:
- Wilson intervals: R. G. Newcombe, "Two-sided confidence intervals for the single proportion:
  comparison of seven methods", Statistics in Medicine 17 (1998) 857-872, Table I, method 3
  (score interval without continuity correction), four worked examples.
- Power / sample size: the examples of R's `stats::power.prop.test` help page
  ("## => power = 0.740", "## => n = 76.7", "## => p2 = 0.8026").
- Two-proportion z: 140/200 vs 255/340 gives z = -1.266015 (a worked textbook exercise with the
  pooled standard error 0.03949401); z = 2 gives the familiar two-sided p = 0.0455003.
Each is also cross-checked by an independent computation (score-test inversion, chi-square).
"""

from __future__ import annotations

import math

import pytest

from bot.domain.stats import (
    compare,
    median,
    power_two_proportions,
    sample_size_per_group,
    two_proportion_test,
    wilson_interval,
    z_for_confidence,
)

NEWCOMBE_WILSON = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("successes", "trials", "low", "high"), NEWCOMBE_WILSON)
def test_wilson_matches_newcombe_table(successes: int, trials: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, trials)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def _score_test_bound(successes: int, trials: int, z: float, upper: bool) -> float:
    """Independent route: the Wilson bound is the p where the score statistic equals z."""
    observed = successes / trials
    lo, hi = (observed, 1.0) if upper else (0.0, observed)
    for _ in range(200):
        mid = (lo + hi) / 2
        stat = abs(observed - mid) / math.sqrt(mid * (1 - mid) / trials) if 0 < mid < 1 else math.inf
        inside = stat < z
        if upper:
            lo, hi = (mid, hi) if inside else (lo, mid)
        else:
            lo, hi = (lo, mid) if inside else (mid, hi)
    return (lo + hi) / 2


@pytest.mark.parametrize(("successes", "trials"), [(81, 263), (7, 9), (3, 1000), (50, 100), (1, 2)])
def test_wilson_equals_inverted_score_test(successes: int, trials: int) -> None:
    z = z_for_confidence(0.95)
    low, high = wilson_interval(successes, trials)
    assert low == pytest.approx(_score_test_bound(successes, trials, z, upper=False), abs=1e-9)
    assert high == pytest.approx(_score_test_bound(successes, trials, z, upper=True), abs=1e-9)


def test_wilson_edges_and_width() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(20, 20)
    assert high == pytest.approx(1.0) and 0.8 < low < 0.85
    # More ratings at the same rate: a narrower interval; wider confidence: a wider one.
    many, few = wilson_interval(50, 100), wilson_interval(5, 10)
    assert many[1] - many[0] < few[1] - few[0]
    narrow = wilson_interval(30, 60, confidence=0.80)
    wide = wilson_interval(30, 60, confidence=0.99)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_z_for_confidence_known_values() -> None:
    assert z_for_confidence(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_for_confidence(0.99) == pytest.approx(2.575829, abs=1e-6)


def test_two_proportion_z_matches_worked_example() -> None:
    result = two_proportion_test(140, 200, 255, 340)
    assert result.z == pytest.approx(-1.266015, abs=1e-6)
    assert result.difference == pytest.approx(0.70 - 0.75)
    assert not result.significant()


def test_two_proportion_p_value_known_z() -> None:
    # 30/50 vs 20/50: pooled 0.5, se = sqrt(0.25 * 2/50) = 0.1, z = 0.2/0.1 = 2.
    result = two_proportion_test(30, 50, 20, 50)
    assert result.z == pytest.approx(2.0)
    assert result.p_value == pytest.approx(0.0455003, abs=1e-7)
    assert result.significant(0.05) and not result.significant(0.01)


@pytest.mark.parametrize(
    ("a", "n_a", "b", "n_b"), [(56, 70, 48, 80), (9, 40, 20, 41), (500, 1000, 530, 1000)]
)
def test_z_squared_equals_pearson_chi_square(a: int, n_a: int, b: int, n_b: int) -> None:
    """Independent route: the pooled z-test is Pearson's chi-square (1 df) on the 2x2 table."""
    table = [[a, n_a - a], [b, n_b - b]]
    total = n_a + n_b
    cols = [a + b, total - a - b]
    chi2 = sum(
        (table[i][j] - (n_a, n_b)[i] * cols[j] / total) ** 2 / ((n_a, n_b)[i] * cols[j] / total)
        for i in range(2)
        for j in range(2)
    )
    result = two_proportion_test(a, n_a, b, n_b)
    assert result.z**2 == pytest.approx(chi2)
    # Survival function of chi-square with 1 df: P(X > c) = erfc(sqrt(c / 2)).
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(chi2 / 2)))


def test_two_proportion_degenerate_cases() -> None:
    assert two_proportion_test(0, 0, 3, 10).p_value == 1.0
    assert two_proportion_test(10, 10, 5, 5).p_value == 1.0  # pooled rate 1: no variance
    assert two_proportion_test(0, 10, 10, 10).p_value < 1e-4


def test_power_matches_r_power_prop_test() -> None:
    assert power_two_proportions(50, 0.50, 0.75) == pytest.approx(0.7401659, abs=1e-6)
    assert power_two_proportions(50, 0.50, 0.8026) == pytest.approx(0.90, abs=5e-4)


def test_sample_size_matches_r_power_prop_test() -> None:
    n = sample_size_per_group(0.50, 0.75, power=0.90)
    assert n is not None and n == pytest.approx(76.7, abs=0.05)
    # And it is the inverse of the power function.
    assert power_two_proportions(n, 0.50, 0.75) == pytest.approx(0.90, abs=1e-9)
    assert sample_size_per_group(0.4, 0.4) is None


def test_compare_reports_leader_and_missing_ratings() -> None:
    result = compare(30, 50, 20, 50)
    assert result.leader == "a" and result.significant
    needed = math.ceil(sample_size_per_group(0.6, 0.4) or 0)
    assert result.needed_per_group == needed
    assert result.more_a == needed - 50 and result.more_total == 2 * (needed - 50)

    close = compare(21, 40, 19, 40)
    assert close.leader == "a" and not close.significant
    assert close.more_a is not None and close.more_a > 1000

    tied = compare(10, 20, 5, 10)
    assert tied.leader is None and tied.needed_per_group is None and tied.more_total is None

    behind = compare(1, 10, 8, 10)
    assert behind.leader == "b" and behind.significant
    assert behind.needed_per_group is not None and behind.needed_per_group < 10
    assert behind.more_a == 0 and behind.more_b == 0


def test_median() -> None:
    assert median([]) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4, 1, 2, 3]) == 2.5
