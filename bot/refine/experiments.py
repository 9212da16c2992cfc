"""The online experiment: a canary variant against the rest of the persona's traffic, decided
sequentially (anytime-valid), with guardrails and a maximum duration.

Unit: the conversation. A conversation's replies share a user and a context, so its ratings are
correlated; treating each rating as independent would overstate the evidence. Each (conversation,
arm) contributes its 👍 and its ratings, and the 👍 rate of an arm is Σ👍 / Σratings with a
delta-method variance over conversations (bot.domain.stats.ratio_estimate). The decision uses the
normal-mixture confidence sequence on canary - control (bot.domain.stats.confidence_sequence): it
may be checked after every rating without inflating false promotions beyond alpha.

    decision        when
    rollback        a guardrail is breached, or the sequence lies wholly below 0 (canary worse)
    promote         the sequence lies wholly above 0 (canary better); `approve` waits for a person
    inconclusive    max_days passed without either (the canary is removed, the version stays)
    continue        otherwise, or before `min_units` rated conversations per arm (burn-in)

Guardrails (canary vs control, same sequence, only in the harmful direction): the rating rate
(ratings per reply: users stop rating what they dislike), the error rate (empty replies, and
replies the model failed to write: the engine notes those in the feedback log) and the median
reply length (more than `max_length_ratio` times control's).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bot.domain.stats import RatioEstimate, SequentialComparison, confidence_sequence, ratio_estimate
from bot.ports import FeedbackLog

Status = Literal["running", "awaiting_approval"]
Action = Literal["continue", "promote", "await_approval", "rollback", "inconclusive"]
CANARY, CONTROL_ARM = "canary", "control"


@dataclass
class Experiment:
    persona_id: str
    candidate: dict[str, Any]  # Candidate.to_dict(): proposer, change, data, notes
    canary: str  # the variant id (= candidate id)
    parent_version: str
    persona_file: str
    added_control: bool
    fraction: float
    started_at: float
    alpha: float = 0.05
    n_opt: float = 500.0
    min_units: int = 30
    max_days: float = 14.0
    max_length_ratio: float = 2.0
    approve: bool = False
    status: Status = "running"
    gate: dict[str, Any] = field(default_factory=dict)  # the candidate's gate numbers
    last: dict[str, Any] = field(default_factory=dict)  # the last check's numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Arm:
    """What one arm of the experiment collected: per conversation (👍, ratings), replies, failures."""

    units: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    replies: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))  # n, ratings, empty
    lengths: list[int] = field(default_factory=list)

    def rated(self) -> list[tuple[float, float]]:
        return [(float(u), float(r)) for u, r in self.units.values() if r > 0]

    def per_reply(self, column: int) -> list[tuple[float, float]]:
        return [(float(v[column]), float(v[0])) for v in self.replies.values() if v[0] > 0]

    @property
    def ratings(self) -> int:
        return sum(r for _, r in self.units.values())

    @property
    def reply_count(self) -> int:
        return sum(v[0] for v in self.replies.values())


def arm_of(variant: str, experiment: Experiment) -> str:
    return CANARY if variant == experiment.canary else CONTROL_ARM


async def collect(log: FeedbackLog, experiment: Experiment, *, scan_limit: int = 20_000) -> dict[str, Arm]:
    """Both arms' numbers since the experiment started (this version only)."""
    arms = {CANARY: Arm(), CONTROL_ARM: Arm()}
    start, pid, version = experiment.started_at, experiment.persona_id, experiment.parent_version
    ratings_of: dict[str, int] = {}
    async for rated in log.iter_rated(pid):
        record = rated.record
        if record.persona_version != version or record.created_at < start:
            continue
        arm = arms[arm_of(record.variant, experiment)]
        unit = arm.units[record.conversation_id]
        unit[0] += rated.ups
        unit[1] += rated.ups + rated.downs
        ratings_of[record.reply_id] = rated.ups + rated.downs
    async for record in log.recent(start, scan_limit):
        if record.persona_id != pid or record.persona_version != version:
            continue
        arm = arms[arm_of(record.variant, experiment)]
        counts = arm.replies[record.conversation_id]
        counts[0] += 1
        counts[1] += ratings_of.get(record.reply_id, 0)
        counts[2] += 0 if record.reply.strip() else 1
        arm.lengths.append(len(record.reply))
    for failure in await log.failures(pid, start):  # replies the model never wrote: errors too
        if failure.persona_version == version:
            counts = arms[arm_of(failure.variant, experiment)].replies[failure.conversation_id]
            counts[0] += 1
            counts[2] += 1
    return arms


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    primary: SequentialComparison | None
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason,
                "primary": None if self.primary is None else self.primary.to_dict(), **self.numbers}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _guardrails(arms: dict[str, Arm], e: Experiment) -> tuple[str | None, dict[str, Any]]:
    control, canary = arms[CONTROL_ARM], arms[CANARY]
    numbers: dict[str, Any] = {}
    rate = confidence_sequence(ratio_estimate(control.per_reply(1)), ratio_estimate(canary.per_reply(1)),
                               alpha=e.alpha, n_opt=e.n_opt)
    errors = confidence_sequence(ratio_estimate(control.per_reply(2)), ratio_estimate(canary.per_reply(2)),
                                 alpha=e.alpha, n_opt=e.n_opt)
    numbers["rating_rate"] = rate.to_dict()
    numbers["error_rate"] = errors.to_dict()
    enough = min(len(control.replies), len(canary.replies)) >= e.min_units
    if enough and rate.upper < 0:
        return (f"guardrail: the canary's rating rate {_pct(rate.rate_b)} is below control's "
                f"{_pct(rate.rate_a)} (sequence {rate.lower:+.3f}..{rate.upper:+.3f})"), numbers
    if enough and errors.lower > 0:
        return (f"guardrail: the canary's error rate (failed or empty replies) {_pct(errors.rate_b)} is above "
                f"control's {_pct(errors.rate_a)}"), numbers
    if len(canary.lengths) >= e.min_units and len(control.lengths) >= e.min_units:
        ratio = statistics.median(canary.lengths) / max(1.0, statistics.median(control.lengths))
        numbers["length_ratio"] = round(ratio, 3)
        if ratio > e.max_length_ratio:
            return f"guardrail: canary replies are {ratio:.1f}x as long as control's (limit {e.max_length_ratio}x)", \
                numbers
    return None, numbers


def decide(arms: dict[str, Arm], experiment: Experiment, now: float | None = None) -> Decision:
    """The decision for the experiment's numbers now (pure: the caller acts on it)."""
    now = time.time() if now is None else now
    control, canary = arms[CONTROL_ARM], arms[CANARY]
    a: RatioEstimate = ratio_estimate(control.rated())
    b: RatioEstimate = ratio_estimate(canary.rated())
    primary = confidence_sequence(a, b, alpha=experiment.alpha, n_opt=experiment.n_opt)
    breach, numbers = _guardrails(arms, experiment)
    numbers |= {
        "units": {CONTROL_ARM: a.units, CANARY: b.units},
        "ratings": {CONTROL_ARM: control.ratings, CANARY: canary.ratings},
        "replies": {CONTROL_ARM: control.reply_count, CANARY: canary.reply_count},
        "days": round((now - experiment.started_at) / 86400, 3),
        "checked_at": now,
    }
    if breach:
        return Decision("rollback", breach, primary, numbers)
    burned_in = min(a.units, b.units) >= experiment.min_units
    summary = (f"👍 {_pct(primary.rate_b)} canary vs {_pct(primary.rate_a)} control over {b.units}+{a.units} "
               f"conversations; difference {primary.difference:+.3f}, {int(100 * (1 - experiment.alpha))}% sequence "
               f"[{primary.lower:+.3f}, {primary.upper:+.3f}]")
    if burned_in and primary.verdict == "b_worse":
        return Decision("rollback", f"canary worse: {summary}", primary, numbers)
    if burned_in and primary.verdict == "b_better":
        action: Action = "await_approval" if experiment.approve else "promote"
        return Decision(action, f"canary better: {summary}", primary, numbers)
    if now - experiment.started_at >= experiment.max_days * 86400:
        return Decision("inconclusive", f"no decision after {experiment.max_days:g} days: {summary}", primary, numbers)
    if not burned_in:
        return Decision("continue", f"burn-in ({experiment.min_units} rated conversations per arm): {summary}",
                        primary, numbers)
    return Decision("continue", f"undecided: {summary}", primary, numbers)
