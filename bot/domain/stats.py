"""Statistics for rated replies: how sure are we that one prompt does better than another?

Pure functions on counts (no scipy): the standard normal comes from `statistics.NormalDist`.

- `wilson_interval`: confidence interval of a 👍 rate. Unlike the textbook "p ± z·se" (Wald)
  interval it stays inside [0, 1] and behaves with few ratings or rates near 0 % or 100 %.
- `two_proportion_test`: pooled two-proportion z-test (equivalently, Pearson's chi-square on the
  2×2 table without continuity correction), two-sided.
- `sample_size_per_group` / `power_two_proportions`: the normal-approximation formula R's
  `power.prop.test` solves, used to say how many more ratings a comparison needs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
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
