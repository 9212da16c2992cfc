"""Anytime-valid statistics of the refinement loop: reference values and seeded simulation.

References:
- The normal-mixture ("conjugate mixture") boundary of Howard, Ramdas, McAuliffe & Sekhon (2021),
  as implemented in confseq's `std_conjmix_margin(t, rho2, alpha)` and its tuning
  `best_rho2_approx(t_opt, alpha) = (-2 log α + log(1 - 2 log α)) / t_opt`; the values below are
  those formulas evaluated by hand.
- Johari, Pekelis & Walsh (2017), the mixture SPRT: with the same mixing variance, Λ ≥ 1/α exactly
  when the confidence sequence excludes 0.
- A fixed-sample z-test looked at after every observation rejects a true null far more often than
  alpha (Armitage, McPherson & Rowe 1969): the reason for all of this.
"""

from __future__ import annotations

import math
import random

import pytest

from bot.domain.stats import (
    RatioEstimate,
    best_rho2,
    confidence_sequence,
    mixture_margin,
    msprt_p_value,
    ratio_estimate,
    ratio_from_sums,
    two_proportion_test,
    weighted_mean_interval,
)


def test_mixture_margin_reference_values() -> None:
    # sqrt(2 (tρ²+1) log(sqrt(tρ²+1)/α) / (t² ρ²))
    assert mixture_margin(100, 0.1, 0.05) == pytest.approx(math.sqrt(22 * math.log(math.sqrt(11) / 0.05) / 1000))
    assert mixture_margin(100, 0.1, 0.05) == pytest.approx(0.303781, abs=1e-6)
    assert mixture_margin(1000, 0.01, 0.05) == pytest.approx(0.096064, abs=1e-6)  # sqrt(22·4.194703/1e4)
    assert mixture_margin(0, 0.1) == math.inf
    # Tuning: (-2 ln 0.05 + ln(1 - 2 ln 0.05)) / 1000 = (5.991465 + 1.944691) / 1000
    assert best_rho2(1000, 0.05) == pytest.approx(0.007936155, abs=1e-8)


def test_sequence_is_wider_than_a_fixed_interval_but_shrinks() -> None:
    rho2 = best_rho2(500)
    widths = [mixture_margin(n, rho2) for n in (50, 500, 5000, 50000)]
    assert widths == sorted(widths, reverse=True)
    for n, width in zip((50, 500, 5000), widths, strict=False):
        assert width > 1.96 / math.sqrt(n)  # the price of looking at every step
    assert widths[1] < 3.1 / math.sqrt(500)  # at its tuning point: ~1.55x a fixed 95% interval


def test_msprt_rejects_exactly_when_the_sequence_excludes_zero() -> None:
    rng = random.Random(1)
    for _ in range(500):
        diff, var, n = rng.uniform(-0.3, 0.3), rng.uniform(1e-4, 1e-2), rng.randint(10, 5000)
        a = RatioEstimate(0.5, var / 2, n // 2, 0, 1)
        b = RatioEstimate(0.5 + diff, var / 2, n - n // 2, 0, 1)
        cs = confidence_sequence(a, b, alpha=0.05, n_opt=500)
        assert (cs.p_value < 0.05) == (cs.lower > 0 or cs.upper < 0) or abs(cs.p_value - 0.05) < 1e-9
        assert msprt_p_value(0.0, var, n, best_rho2(500)) == 1.0


def test_ratio_estimate_with_one_rating_per_unit_is_the_binomial_variance() -> None:
    units = [(1.0, 1.0)] * 30 + [(0.0, 1.0)] * 70
    est = ratio_estimate(units)
    assert est.value == pytest.approx(0.3)
    sample_var = 0.3 * 0.7 * 100 / 99
    assert est.variance == pytest.approx(sample_var / 100)
    assert ratio_estimate([]).variance == math.inf
    assert ratio_estimate([(1.0, 2.0)]).variance == math.inf


def test_clustered_ratings_widen_the_variance() -> None:
    # The same 👍 rate, but each conversation rates all-up or all-down: more uncertain than independent.
    clustered = ratio_estimate([(4.0, 4.0)] * 25 + [(0.0, 4.0)] * 25)
    independent = ratio_estimate([(2.0, 4.0)] * 50)
    assert clustered.value == independent.value == 0.5
    assert clustered.variance > independent.variance


def test_weighted_mean_interval() -> None:
    mean, low, high = weighted_mean_interval([1.0, 0.0, 1.0, 1.0], [1, 1, 1, 1])
    assert mean == 0.75
    assert low < 0.75 < high
    mean, low, high = weighted_mean_interval([1.0], [3])
    assert mean == 1.0 and low == -math.inf


def _peek(rng: random.Random, p_a: float, p_b: float, units: int, share: float) -> tuple[bool, bool, bool]:
    """One experiment checked after every conversation: (sequence decided, naive z-test 'significant'
    at some look, sequence ever excluded the true difference)."""
    sums = {"a": [0, 0.0, 0.0, 0.0, 0.0, 0.0], "b": [0, 0.0, 0.0, 0.0, 0.0, 0.0]}
    decided = naive = missed = False
    rho2_n = 300.0
    for step in range(units):
        arm = "b" if rng.random() < share else "a"
        ratings = rng.randint(1, 3)
        ups = sum(rng.random() < (p_b if arm == "b" else p_a) for _ in range(ratings))
        s = sums[arm]
        s[0] += 1
        s[1] += ups
        s[2] += ratings
        s[3] += ups * ups
        s[4] += ratings * ratings
        s[5] += ups * ratings
        if step < 20 or sums["a"][0] < 10 or sums["b"][0] < 10:
            continue
        est = {k: _from_sums(v) for k, v in sums.items()}
        cs = confidence_sequence(est["a"], est["b"], alpha=0.05, n_opt=rho2_n)
        decided = decided or cs.lower > 0 or cs.upper < 0
        missed = missed or not cs.lower <= p_b - p_a <= cs.upper
        z = two_proportion_test(int(sums["a"][1]), int(sums["a"][2]), int(sums["b"][1]), int(sums["b"][2]))
        naive = naive or z.p_value < 0.05
    return decided, naive, missed


def _from_sums(s: list[float]) -> RatioEstimate:
    return ratio_from_sums(int(s[0]), *s[1:])


def test_from_sums_matches_ratio_estimate() -> None:
    rng = random.Random(3)
    units = [(float(rng.randint(0, 2)), float(rng.randint(2, 3))) for _ in range(40)]
    sums = [40, sum(x for x, _ in units), sum(y for _, y in units), sum(x * x for x, _ in units),
            sum(y * y for _, y in units), sum(x * y for x, y in units)]
    assert _from_sums(sums).variance == pytest.approx(ratio_estimate(units).variance)


def test_aa_false_decisions_stay_under_alpha_when_checked_after_every_conversation() -> None:
    rng = random.Random(12)
    runs = [_peek(rng, 0.6, 0.6, 400, 0.5) for _ in range(150)]
    false_rate = sum(d for d, _, _ in runs) / len(runs)
    naive_rate = sum(n for _, n, _ in runs) / len(runs)
    # alpha = 5 %; 150 runs give a standard error of ~1.8 points: allow 5 % + 3 se.
    assert false_rate <= 0.05 + 0.055
    assert naive_rate > 0.15  # peeking at a fixed-sample test is what this replaces
    assert naive_rate > 2 * false_rate


def test_a_real_difference_is_found_and_covered() -> None:
    rng = random.Random(5)
    runs = [_peek(rng, 0.4, 0.65, 600, 0.5) for _ in range(60)]
    assert sum(d for d, _, _ in runs) / len(runs) > 0.9
    assert sum(m for _, _, m in runs) / len(runs) <= 0.05 + 0.09  # coverage at every look
