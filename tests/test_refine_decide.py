"""The experiment's decision rule on synthetic arms: burn-in, win, loss, guardrails, duration, approval."""

from __future__ import annotations

import random

from bot.refine.experiments import CANARY, CONTROL_ARM, Arm, Experiment, decide

DAY = 86400.0


def experiment(**changes: object) -> Experiment:
    base = Experiment("p", {"proposer": "hand"}, "refine-x", "1.0", "p.yaml", True, 0.5, 0.0, min_units=10,
                      n_opt=200.0)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def arms(p_control: float, p_canary: float, conversations: int, *, seed: int = 0, length_canary: int = 80,
         empty_canary: float = 0.0) -> dict[str, Arm]:
    rng = random.Random(seed)
    out = {CONTROL_ARM: Arm(), CANARY: Arm()}
    for c in range(conversations):
        for name, p in ((CONTROL_ARM, p_control), (CANARY, p_canary)):
            arm = out[name]
            ups = sum(rng.random() < p for _ in range(2))
            arm.units[f"c{c}"] = [ups, 2]
            empty = int(name == CANARY and rng.random() < empty_canary)
            arm.replies[f"c{c}"] = [2, 2, empty]
            arm.lengths += [length_canary if name == CANARY else 80] * 2
    return out


def test_burn_in_then_a_clear_winner_is_promoted() -> None:
    assert decide(arms(0.3, 0.9, 5), experiment(), now=DAY).action == "continue"
    decision = decide(arms(0.3, 0.9, 60), experiment(), now=DAY)
    assert decision.action == "promote" and "canary better" in decision.reason
    assert decision.primary is not None and decision.primary.lower > 0
    assert decide(arms(0.3, 0.9, 60), experiment(approve=True), now=DAY).action == "await_approval"


def test_a_clear_loser_is_rolled_back() -> None:
    decision = decide(arms(0.9, 0.3, 60), experiment(), now=DAY)
    assert decision.action == "rollback" and "canary worse" in decision.reason


def test_undecided_until_the_maximum_duration_then_inconclusive() -> None:
    level = arms(0.6, 0.6, 40, seed=3)
    assert decide(level, experiment(), now=DAY).action == "continue"
    late = decide(level, experiment(max_days=7.0), now=7 * DAY + 1)
    assert late.action == "inconclusive" and "7 days" in late.reason


def test_guardrails_roll_back_long_or_failing_canaries_even_when_liked() -> None:
    long = decide(arms(0.5, 0.9, 60, length_canary=400), experiment(), now=DAY)
    assert long.action == "rollback" and "as long" in long.reason
    failing = decide(arms(0.5, 0.5, 80, empty_canary=0.5), experiment(), now=DAY)
    assert failing.action == "rollback" and "error rate" in failing.reason


def test_a_falling_rating_rate_is_a_guardrail() -> None:
    data = arms(0.6, 0.6, 80)
    for key, counts in data[CANARY].replies.items():
        data[CANARY].replies[key] = [counts[0] * 4, counts[1], 0]  # the same ratings over 4x the replies
    decision = decide(data, experiment(), now=DAY)
    assert decision.action == "rollback" and "rating rate" in decision.reason
