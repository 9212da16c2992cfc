"""Statistics for rated replies: how sure are we that one prompt does better than another?

Pure functions on counts (no scipy): the standard normal comes from `statistics.NormalDist`.

- `wilson_interval`: confidence interval of a 👍 rate. Unlike the textbook "p ± z·se" (Wald)
  interval it stays inside [0, 1] and behaves with few ratings or rates near 0 % or 100 %.
- `two_proportion_test`: pooled two-proportion z-test (equivalently, Pearson's chi-square on the
  2×2 table without continuity correction), two-sided.
- `sample_size_per_group` / `power_two_proportions`: the normal-approximation formula R's
  `power.prop.test` solves, used to say how many more ratings a comparison needs.

Sequential (anytime-valid) statistics, for experiments that are looked at after every rating:

- `ratio_estimate`: a rate over units (conversations), Σ👍 / Σratings, with its delta-method
  variance: ratings of one conversation are correlated, so the conversation is the unit.
- `mixture_margin` / `confidence_sequence`: the normal-mixture (conjugate mixture) confidence
  sequence of Howard, Ramdas, McAuliffe & Sekhon (2021, Ann. Statist. 49(2), eq. for the
  "asymptotic CS" of Waudby-Smith et al. 2024) — the one GrowthBook's sequential testing uses. It
  holds at every sample size at once: P(the true difference ever leaves it) <= alpha, however often
  it is looked at. The same boundary is Johari et al.'s mixture SPRT (mSPRT, Optimizely's stats
  engine): `msprt_p_value` is its always-valid p-value, below alpha exactly when the sequence
  excludes 0. A fixed-sample z-test looked at daily has no such guarantee.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_NORMAL = statistics.NormalDist()


def z_for_confidence(confidence: float) -> float:
    """Two-sided critical value, e.g. 0.95 -> 1.95996."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    return _NORMAL.inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes/trials; (0, 1) when there are no trials yet."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    z = z_for_confidence(confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / trials + z2n / (4.0 * trials))
    # Clamp float noise at the edges (0/n and n/n give exactly 0 and 1 in exact arithmetic).
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Result of comparing a = successes_a/trials_a with b = successes_b/trials_b."""

    rate_a: float
    rate_b: float
    z: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.rate_a - self.rate_b

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def two_proportion_test(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> ProportionTest:
    """Two-sided pooled z-test of H0: both groups share one rate.

    With no trials in a group, or when the pooled rate is 0 or 1 (no variance), there is no
    evidence either way: z = 0 and p = 1.
    """
    for s, n in ((successes_a, trials_a), (successes_b, trials_b)):
        if n < 0 or not 0 <= s <= n:
            raise ValueError(f"need 0 <= successes <= trials, got {s}/{n}")
    rate_a = successes_a / trials_a if trials_a else 0.0
    rate_b = successes_b / trials_b if trials_b else 0.0
    if not trials_a or not trials_b:
        return ProportionTest(rate_a, rate_b, 0.0, 1.0)
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1.0 - pooled) * (1.0 / trials_a + 1.0 / trials_b)
    if variance <= 0.0:
        return ProportionTest(rate_a, rate_b, 0.0, 1.0)
    z = (rate_a - rate_b) / math.sqrt(variance)
    # erfc keeps precision for large |z| where 1 - cdf would round to 0.
    p_value = math.erfc(abs(z) / math.sqrt(2.0))
    return ProportionTest(rate_a, rate_b, z, min(1.0, p_value))


def _power_terms(p1: float, p2: float, alpha: float) -> tuple[float, float, float]:
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError("rates must be between 0 and 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    z_alpha = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    mean = (p1 + p2) / 2.0
    null_sd = math.sqrt(2.0 * mean * (1.0 - mean))
    alt_sd = math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2))
    return z_alpha * null_sd, alt_sd, abs(p1 - p2)


def power_two_proportions(n_per_group: float, p1: float, p2: float, alpha: float = 0.05) -> float:
    """Power of the two-sided test with n ratings in each group (R: power.prop.test, strict=FALSE)."""
    critical, alt_sd, delta = _power_terms(p1, p2, alpha)
    if alt_sd == 0.0:
        return 1.0 if delta > 0 else alpha / 2.0
    return _NORMAL.cdf((math.sqrt(n_per_group) * delta - critical) / alt_sd)


def sample_size_per_group(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Ratings needed in EACH group to detect p1 vs p2; None when p1 == p2 (never detectable).

    n = (z_{1-α/2}·sqrt(2·p̄·q̄) + z_{power}·sqrt(p1·q1 + p2·q2))² / (p1 - p2)²
    (Fleiss' formula without continuity correction; the root R's power.prop.test finds).
    """
    if not 0.0 < power < 1.0:
        raise ValueError("power must be between 0 and 1")
    critical, alt_sd, delta = _power_terms(p1, p2, alpha)
    if delta == 0.0:
        return None
    return ((critical + _NORMAL.inv_cdf(power) * alt_sd) / delta) ** 2


@dataclass(frozen=True, slots=True)
class Comparison:
    """Two rated groups compared: who is ahead, is it significant, how many more ratings."""

    test: ProportionTest
    alpha: float
    needed_per_group: int | None  # None: the observed rates are equal, no sample size will do
    more_a: int | None
    more_b: int | None

    @property
    def significant(self) -> bool:
        return self.test.significant(self.alpha)

    @property
    def leader(self) -> str | None:
        """'a', 'b', or None when the observed rates are equal."""
        if self.test.rate_a == self.test.rate_b:
            return None
        return "a" if self.test.rate_a > self.test.rate_b else "b"

    @property
    def more_total(self) -> int | None:
        if self.more_a is None or self.more_b is None:
            return None
        return self.more_a + self.more_b


def compare(
    ups_a: int, ratings_a: int, ups_b: int, ratings_b: int, *, alpha: float = 0.05, power: float = 0.8
) -> Comparison:
    """Compare two 👍 rates; the sample size is for the difference observed so far."""
    test = two_proportion_test(ups_a, ratings_a, ups_b, ratings_b)
    if not ratings_a or not ratings_b:
        return Comparison(test, alpha, None, None, None)
    needed = sample_size_per_group(test.rate_a, test.rate_b, alpha, power)
    if needed is None:
        return Comparison(test, alpha, None, None, None)
    per_group = math.ceil(needed)
    return Comparison(test, alpha, per_group, max(0, per_group - ratings_a), max(0, per_group - ratings_b))


def median(values: Iterable[float]) -> float | None:
    """Median, or None for no values."""
    data = list(values)
    return statistics.median(data) if data else None


# -- sequential, anytime-valid statistics ---------------------------------------------------------


def best_rho2(n_opt: float, alpha: float = 0.05) -> float:
    """The mixture's tuning ρ² that makes the sequence narrowest near `n_opt` units
    (Howard et al. 2021; confseq's `best_rho2_approx`): (-2 log α + log(1 - 2 log α)) / n_opt."""
    if n_opt <= 0:
        raise ValueError("n_opt must be positive")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    a = -2.0 * math.log(alpha)
    return (a + math.log(1.0 + a)) / n_opt


def mixture_margin(n: float, rho2: float, alpha: float = 0.05) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence for a mean of unit-variance
    observations after n of them: sqrt(2(nρ²+1)/(n²ρ²) · log(sqrt(nρ²+1)/α)).
    Multiply by the per-unit standard deviation. (confseq: `std_conjmix_margin`.)"""
    if n <= 0:
        return math.inf
    if rho2 <= 0 or not 0.0 < alpha < 1.0:
        raise ValueError("need rho2 > 0 and 0 < alpha < 1")
    grown = n * rho2 + 1.0
    return math.sqrt(2.0 * grown / (n * n * rho2) * math.log(math.sqrt(grown) / alpha))


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """Σx / Σy over n units (e.g. 👍 over ratings per conversation) and the estimate's variance."""

    value: float
    variance: float
    units: int
    numerator: float
    denominator: float


def ratio_estimate(units: Sequence[tuple[float, float]]) -> RatioEstimate:
    """Ratio of sums over units (x_i, y_i) with the delta-method variance
    Var(R) ≈ (s_x² - 2R·s_xy + R²·s_y²) / (n · ȳ²) (sample (co)variances over units).

    Units with y = 0 count (they carry no ratings but are part of the sample)."""
    n = len(units)
    sx = sum(x for x, _ in units)
    sy = sum(y for _, y in units)
    if n == 0 or sy <= 0:
        return RatioEstimate(0.0, math.inf, n, sx, sy)
    r = sx / sy
    if n < 2:
        return RatioEstimate(r, math.inf, n, sx, sy)
    mx, my = sx / n, sy / n
    vxx = sum((x - mx) ** 2 for x, _ in units) / (n - 1)
    vyy = sum((y - my) ** 2 for _, y in units) / (n - 1)
    vxy = sum((x - mx) * (y - my) for x, y in units) / (n - 1)
    variance = max(0.0, (vxx - 2 * r * vxy + r * r * vyy) / (n * my * my))
    return RatioEstimate(r, variance, n, sx, sy)


def ratio_from_sums(n: int, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> RatioEstimate:
    """`ratio_estimate` from running sums (n, Σx, Σy, Σx², Σy², Σxy): O(1) per update, for a check
    after every rating. Slightly less exact in floating point than the two-pass form."""
    if n == 0 or sy <= 0:
        return RatioEstimate(0.0, math.inf, n, sx, sy)
    r = sx / sy
    if n < 2:
        return RatioEstimate(r, math.inf, n, sx, sy)
    mx, my = sx / n, sy / n
    vxx, vyy, vxy = ((sxx - n * mx * mx) / (n - 1), (syy - n * my * my) / (n - 1), (sxy - n * mx * my) / (n - 1))
    return RatioEstimate(r, max(0.0, (vxx - 2 * r * vxy + r * r * vyy) / (n * my * my)), n, sx, sy)


@dataclass(frozen=True, slots=True)
class SequentialComparison:
    """B - A with its anytime-valid confidence sequence and the mSPRT's always-valid p-value."""

    rate_a: float
    rate_b: float
    difference: float
    lower: float
    upper: float
    p_value: float
    units_a: int
    units_b: int
    alpha: float

    @property
    def verdict(self) -> str:
        """'b_better', 'b_worse', or 'undecided' (the sequence still holds 0)."""
        if self.lower > 0:
            return "b_better"
        if self.upper < 0:
            return "b_worse"
        return "undecided"

    def to_dict(self) -> dict[str, object]:
        return {
            "rate_a": self.rate_a, "rate_b": self.rate_b, "difference": self.difference,
            "cs_low": _finite(self.lower), "cs_high": _finite(self.upper), "p_value": self.p_value,
            "units_a": self.units_a, "units_b": self.units_b, "alpha": self.alpha, "verdict": self.verdict,
        }  # fmt: skip


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def msprt_p_value(difference: float, variance: float, n: float, rho2: float) -> float:
    """Always-valid p-value of H0: difference = 0 from Johari et al.'s mixture SPRT, 1 / Λ with
    Λ = sqrt(V/(V+τ²)) · exp(τ²·d² / (2V(V+τ²))), V the estimate's variance and τ² = n·V·ρ² (the
    normal mixing variance, on the same scale as the confidence sequence's ρ²)."""
    if not math.isfinite(variance) or n <= 0:
        return 1.0
    if variance <= 0:
        return 1.0 if difference == 0 else 0.0
    tau2 = n * variance * rho2
    log_lambda = 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference**2 / (
        2 * variance * (variance + tau2)
    )
    return min(1.0, math.exp(-log_lambda))


def confidence_sequence(
    a: RatioEstimate, b: RatioEstimate, *, alpha: float = 0.05, n_opt: float = 500.0
) -> SequentialComparison:
    """Anytime-valid comparison of two rates: B - A ± sqrt(N·V)·mixture_margin(N), N = all units,
    V = Var(A) + Var(B). Tuned (`n_opt`) to be narrowest near that many units in all."""
    n = a.units + b.units
    diff = b.value - a.value
    variance = a.variance + b.variance
    rho2 = best_rho2(n_opt, alpha)
    if not math.isfinite(variance):
        return SequentialComparison(a.value, b.value, diff, -math.inf, math.inf, 1.0, a.units, b.units, alpha)
    half = math.sqrt(n * variance) * mixture_margin(n, rho2, alpha)
    p = msprt_p_value(diff, variance, n, rho2)
    return SequentialComparison(a.value, b.value, diff, diff - half, diff + half, p, a.units, b.units, alpha)


def weighted_mean_interval(
    values: Sequence[float], weights: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): a weighted mean with a normal interval on Kish's effective sample size
    n_eff = (Σw)² / Σw². With fewer than two values the interval is unbounded (±inf)."""
    if len(values) != len(weights) or any(w < 0 for w in weights):
        raise ValueError("need one non-negative weight per value")
    total = sum(weights)
    if total <= 0:
        return 0.0, -math.inf, math.inf
    mean = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    n_eff = total * total / sum(w * w for w in weights)
    if n_eff <= 1.0 + 1e-9:
        return mean, -math.inf, math.inf
    spread = sum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True)) / total
    se = math.sqrt(spread * n_eff / (n_eff - 1.0) / n_eff)
    z = z_for_confidence(confidence)
    return mean, mean - z * se, mean + z * se
