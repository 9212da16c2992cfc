"""Eval results: pass rates per persona/variant and per test, side-by-side variant comparison,
JSON for CI, and the threshold that decides the exit code."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations

from bot.domain.stats import compare, wilson_interval
from bot.domain.table import percent, render_table
from bot.evals.assertions import AssertionResult

Target = tuple[str, str]  # (persona id, variant)


@dataclass(frozen=True, slots=True)
class CaseRun:
    """One test case run once (of --repeat N) against one persona variant."""

    persona_id: str
    persona_version: str
    variant: str
    case: str
    attempt: int
    reply: str
    latency_s: float
    checks: tuple[AssertionResult, ...] = ()
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, object]:
        return {
            "persona": self.persona_id,
            "version": self.persona_version,
            "variant": self.variant,
            "case": self.case,
            "attempt": self.attempt,
            "passed": self.passed,
            "reply": self.reply,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True, slots=True)
class PassRate:
    passed: int
    total: int

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.passed, self.total)

    def to_dict(self) -> dict[str, object]:
        low, high = self.interval
        return {"passed": self.passed, "total": self.total, "rate": self.rate, "ci95": [low, high]}


def _tally(runs: Iterable[CaseRun], *, per_case: bool) -> dict[tuple[str, ...], PassRate]:
    counts: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        k = (run.persona_id, run.variant, run.case) if per_case else (run.persona_id, run.variant)
        counts[k][0] += run.passed
        counts[k][1] += 1
    return {k: PassRate(p, t) for k, (p, t) in counts.items()}


@dataclass
class EvalResults:
    runs: list[CaseRun] = field(default_factory=list)

    def by_target(self) -> dict[tuple[str, ...], PassRate]:
        return _tally(self.runs, per_case=False)

    def by_case(self) -> dict[tuple[str, ...], PassRate]:
        return _tally(self.runs, per_case=True)

    def below(self, threshold: float) -> list[tuple[str, ...]]:
        """Persona/variant targets whose pass rate is under the threshold (the CI failure)."""
        return [k for k, r in self.by_target().items() if r.rate < threshold]

    def to_dict(self, threshold: float) -> dict[str, object]:
        return {
            "threshold": threshold,
            "ok": not self.below(threshold),
            "targets": [
                {"persona": k[0], "variant": k[1], **r.to_dict()} for k, r in sorted(self.by_target().items())
            ],
            "cases": [
                {"persona": k[0], "variant": k[1], "case": k[2], **r.to_dict()}
                for k, r in sorted(self.by_case().items())
            ],
            "runs": [r.to_dict() for r in self.runs],
        }

    def to_json(self, threshold: float) -> str:
        return json.dumps(self.to_dict(threshold), ensure_ascii=False, indent=2)

    def render(self, threshold: float) -> str:
        parts = [self._summary_table(threshold), self._case_table()]
        parts += [c for c in (self._comparison(p) for p in self._personas()) if c]
        failures = self._failure_lines()
        if failures:
            parts.append("Failures:\n" + "\n".join(failures))
        return "\n\n".join(parts)

    # -- rendering helpers --------------------------------------------------------------------

    def _personas(self) -> list[str]:
        return sorted({r.persona_id for r in self.runs})

    def _variants(self, persona_id: str) -> list[str]:
        return sorted({r.variant for r in self.runs if r.persona_id == persona_id})

    def _summary_table(self, threshold: float) -> str:
        rows = []
        for (persona, variant), r in sorted(self.by_target().items()):
            low, high = r.interval
            verdict = "ok" if r.rate >= threshold else f"FAIL (< {percent(threshold, 0)})"
            rows.append(
                [
                    persona,
                    variant,
                    f"{r.passed}/{r.total}",
                    percent(r.rate),
                    f"{percent(low)}–{percent(high)}",
                    verdict,
                ]
            )
        return render_table(["persona", "variant", "passed", "rate", "95% CI", "result"], rows, right=(2, 3))

    def _case_table(self) -> str:
        rows = [
            [persona, variant, case, f"{r.passed}/{r.total}", percent(r.rate)]
            for (persona, variant, case), r in sorted(self.by_case().items())
        ]
        return render_table(["persona", "variant", "test", "passed", "rate"], rows, right=(3, 4))

    def _comparison(self, persona_id: str) -> str | None:
        """Side by side: one row per test, one column per variant, then pairwise significance."""
        variants = self._variants(persona_id)
        if len(variants) < 2:
            return None
        cases = self.by_case()
        names = sorted({k[2] for k in cases if k[0] == persona_id})
        rows = [[name, *(self._cell(cases.get((persona_id, v, name))) for v in variants)] for name in names]
        totals = self.by_target()
        rows.append(["ALL", *(self._cell(totals.get((persona_id, v))) for v in variants)])
        table = render_table(["test", *variants], rows, right=tuple(range(1, len(variants) + 1)))
        lines = [f"{persona_id}: variants side by side", table]
        for a, b in combinations(variants, 2):
            lines.append(self._pair_line(totals[(persona_id, a)], totals[(persona_id, b)], a, b))
        return "\n".join(lines)

    @staticmethod
    def _cell(rate: PassRate | None) -> str:
        return "-" if rate is None else f"{percent(rate.rate, 0)} ({rate.passed}/{rate.total})"

    @staticmethod
    def _pair_line(ra: PassRate, rb: PassRate, a: str, b: str) -> str:
        result = compare(ra.passed, ra.total, rb.passed, rb.total)
        if result.leader is None:
            return f"{a} vs {b}: same pass rate"
        ahead, behind = (a, b) if result.leader == "a" else (b, a)
        sig = "significant" if result.significant else "not significant"
        gap = percent(abs(result.test.difference))
        return f"{a} vs {b}: {ahead} ahead of {behind} by {gap} (p={result.test.p_value:.3f}, {sig})"

    def _failure_lines(self) -> list[str]:
        lines = []
        for run in self.runs:
            if run.passed:
                continue
            why = run.error or "; ".join(f"{c.kind}: {c.detail}" for c in run.checks if not c.passed)
            lines.append(f"- {run.persona_id}/{run.variant}/{run.case}#{run.attempt}: {why}")
        return lines
