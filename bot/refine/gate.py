"""The offline gate: every candidate against the current version before any user sees it.

(a) The persona's test suite: no case may pass fewer times for the candidate than for the current
    version (no regression).
(b) The validation replay set: both the current version and the candidate re-generate a reply for
    each rated conversation (the same prompt recipe as production), and a judge compares it with
    the rated reply: better than a 👎 one, not worse than a 👍 one (bot.refine.judge). The
    candidate passes when its paired score difference over the current version is above
    `min_lift` (default: any improvement), reported with a 95 % interval.
Plus what it costs: completion tokens, latency, prompt size. A candidate that fails the gate can
never start a canary (`GateRejected`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from bot.domain.persona import Persona
from bot.domain.stats import weighted_mean_interval
from bot.domain.table import render_table
from bot.evals import EvalTarget, ModelResponder, run_evals
from bot.ports import ModelProvider
from bot.refine.candidates import Candidate
from bot.refine.dataset import Dataset
from bot.refine.evaluation import ItemResult, JudgeFor, Scorer, ScoreResult

CURRENT = "current"


@dataclass
class ArmResult:
    name: str
    proposer: str
    validation: ScoreResult
    suite: dict[str, tuple[int, int]] = field(default_factory=dict)
    suite_failures: list[str] = field(default_factory=list)
    lift: tuple[float, float, float] | None = None  # paired (mean, low, high) vs current
    regressions: list[str] = field(default_factory=list)
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    diff: str = ""

    @property
    def suite_passed(self) -> tuple[int, int]:
        return sum(p for p, _ in self.suite.values()), sum(t for _, t in self.suite.values())

    def to_dict(self) -> dict[str, Any]:
        passed, total = self.suite_passed
        return {
            "name": self.name,
            "proposer": self.proposer,
            "validation": self.validation.summary(),
            "validation_items": [i.to_dict() for i in self.validation.items],
            "suite": {"passed": passed, "total": total, "cases": {k: list(v) for k, v in self.suite.items()},
                      "failures": self.suite_failures},
            "lift": None if self.lift is None else {"mean": self.lift[0], "ci95": [self.lift[1], self.lift[2]]},
            "regressions": self.regressions,
            "passed": self.passed,
            "reasons": self.reasons,
            "diff": self.diff,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmResult:
        lift = d.get("lift")
        return cls(
            d["name"], d["proposer"], ScoreResult([ItemResult.from_dict(i) for i in d["validation_items"]]),
            {k: (v[0], v[1]) for k, v in d["suite"]["cases"].items()}, list(d["suite"]["failures"]),
            None if lift is None else (lift["mean"], lift["ci95"][0], lift["ci95"][1]),
            list(d["regressions"]), bool(d["passed"]), list(d["reasons"]), d.get("diff", ""),
        )  # fmt: skip


@dataclass
class GateReport:
    persona_id: str
    version: str
    dataset: str
    current: ArmResult
    candidates: list[ArmResult]
    min_lift: float = 0.0
    created_at: float = field(default_factory=time.time)

    @property
    def winner(self) -> str | None:
        passed = [c for c in self.candidates if c.passed and c.lift is not None]
        if not passed:
            return None
        best = max(passed, key=lambda c: (c.lift[0] if c.lift else 0.0,
                                          -(c.validation.summary()["prompt_tokens"] or 0)))  # type: ignore[operator]
        return best.name

    def result(self, name: str) -> ArmResult | None:
        return next((c for c in self.candidates if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "persona": self.persona_id, "version": self.version, "dataset": self.dataset,
            "min_lift": self.min_lift, "created_at": self.created_at, "winner": self.winner,
            "current": self.current.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateReport:
        return cls(d["persona"], d["version"], d["dataset"], ArmResult.from_dict(d["current"]),
                   [ArmResult.from_dict(c) for c in d["candidates"]], d.get("min_lift", 0.0), d["created_at"])

    # -- rendering ----------------------------------------------------------------------------

    def rows(self) -> list[list[object]]:
        out: list[list[object]] = []
        for arm in [self.current, *self.candidates]:
            s = arm.validation.summary()
            passed, total = arm.suite_passed
            lift = "-" if arm.lift is None else f"{arm.lift[0]:+.3f} [{arm.lift[1]:+.2f}, {arm.lift[2]:+.2f}]"
            verdict = "baseline" if arm.name == CURRENT else ("PASS" if arm.passed else "fail")
            ci = s["ci95"]
            out.append([
                arm.name, arm.proposer, f"{s['score']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]",  # type: ignore[index]
                lift, f"{passed}/{total}" if total else "-", _num(s["completion_tokens"]),
                _num(s["latency_s"], 2), _num(s["prompt_tokens"]), verdict,
            ])  # fmt: skip
        return out

    HEADERS = ("arm", "proposer", "judge score [95% CI]", "lift vs current", "suite", "tokens", "latency s",
               "prompt", "gate")

    def render_text(self) -> str:
        table = render_table(self.HEADERS, self.rows(), right=(4, 5, 6, 7))
        lines = [f"{self.persona_id} v{self.version}: {len(self.current.validation.items)} validation replies "
                 f"(dataset {self.dataset}), {self.current.suite_passed[1]} suite runs", table]
        for arm in self.candidates:
            if arm.reasons:
                lines.append(f"{arm.name}: " + "; ".join(arm.reasons))
        lines.append(f"winner: {self.winner}" if self.winner else "no candidate passed the gate")
        return "\n\n".join(lines)

    def render_html(self) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in self.HEADERS)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in self.rows())
        parts = [
            f"<h2>Offline gate: {escape(self.persona_id)} v{escape(self.version)}</h2>",
            f"<p>{len(self.current.validation.items)} validation replies, dataset {escape(self.dataset)}; "
            f"winner: {escape(self.winner or 'none')}</p>",
            f"<table><tr>{head}</tr>{body}</table>",
        ]
        for arm in self.candidates:
            parts.append(f"<h3>{escape(arm.name)} ({escape(arm.proposer)})</h3>")
            if arm.reasons:
                parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in arm.reasons) + "</ul>")
            parts.append(f"<pre>{escape(arm.diff)}</pre>")
        return "".join(parts)


def _num(value: object, digits: int = 0) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


async def _suite(models: ModelProvider, judge_for: JudgeFor, targets: list[EvalTarget], repeat: int
                 ) -> dict[str, tuple[dict[str, tuple[int, int]], list[str]]]:
    if not targets or not targets[0].cases:
        return {}
    results = await run_evals(targets, ModelResponder(models), judge_for=judge_for, repeat=repeat)
    out: dict[str, tuple[dict[str, tuple[int, int]], list[str]]] = {t.variant: ({}, []) for t in targets}
    for (_, variant, case), rate in results.by_case().items():
        out[variant][0][case] = (rate.passed, rate.total)
    for run in results.runs:
        if not run.passed:
            why = run.error or "; ".join(f"{c.kind}: {c.detail}" for c in run.checks if not c.passed)
            out[run.variant][1].append(f"{run.case}: {why}")
    return out


def _judge(current: ArmResult, arm: ArmResult, min_lift: float) -> None:
    cur = {i.reply_id: i for i in current.validation.items}
    pairs = [(i.score - cur[i.reply_id].score, i.weight) for i in arm.validation.items if i.reply_id in cur]
    if pairs:
        mean, low, high = weighted_mean_interval([d for d, _ in pairs], [w for _, w in pairs])
        arm.lift = (mean, max(-1.0, low), min(1.0, high))
    for case, (passed, total) in current.suite.items():
        got = arm.suite.get(case, (0, total))[0]
        if got < passed:
            arm.regressions.append(f"{case}: {got}/{total} passed (current: {passed}/{total})")
    if arm.regressions:
        arm.reasons.append("test suite regression: " + ", ".join(arm.regressions))
    if arm.lift is None:
        arm.reasons.append("no validation replies to score")
    elif arm.lift[0] <= min_lift:
        arm.reasons.append(f"validation lift {arm.lift[0]:+.3f} is not above {min_lift:+.3f}")
    if arm.validation.errors > current.validation.errors:
        arm.reasons.append(f"{arm.validation.errors} failed generations (current: {current.validation.errors})")
    arm.passed = not arm.reasons


async def run_gate(
    dataset: Dataset,
    persona: Persona,
    candidates: Sequence[Candidate],
    *,
    scorer: Scorer,
    models: ModelProvider,
    suite_judge: JudgeFor,
    min_lift: float = 0.0,
    max_items: int = 0,
    suite_repeat: int = 1,
) -> GateReport:
    """Score the current version and each candidate; `max_items` > 0 caps the validation replies
    replayed (the most-rated first, so the cap keeps the strongest evidence)."""
    items = sorted(dataset.validation, key=lambda i: (-i.weight, i.created_at))
    if max_items > 0:
        items = items[:max_items]
    personas = {CURRENT: persona, **{c.id: c.persona(persona) for c in candidates}}
    targets = [EvalTarget(p, name, dataset.cases) for name, p in personas.items()]
    suite = await _suite(models, suite_judge, targets, suite_repeat)
    arms: dict[str, ArmResult] = {}
    for name, p in personas.items():
        found = next((c for c in candidates if c.id == name), None)
        cases, failures = suite.get(name, ({}, []))
        arms[name] = ArmResult(name, found.proposer if found else "-", await scorer.score(p, items), cases, failures,
                               diff=found.diff(persona) if found else "")
    current = arms.pop(CURRENT)
    for arm in arms.values():
        _judge(current, arm, min_lift)
    return GateReport(persona.id, persona.version, dataset.fingerprint, current, list(arms.values()), min_lift)
