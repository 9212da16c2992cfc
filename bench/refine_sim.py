"""Proof that the refinement loop works: seeded, bounded simulations plus one real local-model run.

    .venv/bin/python bench/refine_sim.py [--parts abcd] [--seed 1] [--record]

(a) Lift. The whole loop (engine -> real Redis -> dataset -> rewrite + few-shot proposers -> gate ->
    canary in the persona file -> automatic decision after every conversation -> promote or roll
    back) runs in rounds on bot.refine.sim's toy world: a model that follows its prompt, users with
    a hidden, known taste. Reports the expected 👍 rate of each version against the best reachable.
(b) False promotions. 200 A/A experiments (the canary is the control), the decision checked after
    every rating, until the maximum duration: how many promote anything (alpha = 5 %)? Beside it,
    a fixed-sample z-test looked at after every rating, and daily for 30 days.
(c) Rollback. A deliberately worse canary (👍 0.50 vs 0.60, and 0.40): how often it is rolled back,
    and after how many ratings.
(d) Real model. SmolLM2-135M (bundled) chats as the captain persona, simulated raters rate its
    replies, the few-shot proposer picks examples from the 👍 ones, and the gate reports the
    validation judge score (the model judging itself, pairwise, both orders) before and after.
(b) and (c) use the same statistics functions as the decision (bot.domain.stats), updated in O(1)
after each rating, with the same burn-in (10 rated conversations per arm) and tuning.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.domain.stats import confidence_sequence, ratio_from_sums, two_proportion_test  # noqa: E402

ALPHA, N_OPT, MIN_UNITS, FRACTION = 0.05, 500.0, 30, 0.1


# -- (b), (c): the sequential decision, checked after every rating ----------------------------------


class Arm:
    __slots__ = ("n", "ratings", "sx", "sxx", "sxy", "sy", "syy", "ups")

    def __init__(self) -> None:
        self.n = self.ups = self.ratings = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0

    def rate(self, before: tuple[int, int], up: bool) -> tuple[int, int]:
        """One more rating in a conversation that had (ups, ratings) = before in this arm."""
        x0, y0 = before
        x1, y1 = x0 + up, y0 + 1
        if y0 == 0:
            self.n += 1
        self.sx += x1 - x0
        self.sy += 1
        self.sxx += x1 * x1 - x0 * x0
        self.syy += y1 * y1 - y0 * y0
        self.sxy += x1 * y1 - x0 * y0
        self.ups += up
        self.ratings += 1
        return x1, y1

    def estimate(self) -> Any:
        return ratio_from_sums(self.n, self.sx, self.sy, self.sxx, self.syy, self.sxy)


def experiment(rng: random.Random, p_control: float, p_canary: float, conversations: int,
               days: int = 30) -> dict[str, Any]:
    """One experiment of `conversations` (its maximum duration, spread over `days`): conversations
    arrive one by one, each with 1-4 ratings from a user with their own taste (Beta around the arm's
    rate: ratings within a conversation are correlated)."""
    arms = {"control": Arm(), "canary": Arm()}
    out: dict[str, Any] = {"sequential": None, "naive_every": False, "naive_daily": False, "ratings": 0}
    per_day = conversations // days
    for c in range(conversations):
        arm_name = "canary" if rng.random() < FRACTION else "control"
        arm, p = arms[arm_name], (p_canary if arm_name == "canary" else p_control)
        user_p = rng.betavariate(4 * p, 4 * (1 - p))
        state = (0, 0)
        for _ in range(rng.randint(1, 4)):
            state = arm.rate(state, rng.random() < user_p)
            out["ratings"] += 1
            a, b = arms["control"], arms["canary"]
            if min(a.n, b.n) < MIN_UNITS:
                continue
            if out["sequential"] is None:
                cs = confidence_sequence(a.estimate(), b.estimate(), alpha=ALPHA, n_opt=N_OPT)
                if cs.lower > 0 or cs.upper < 0:
                    out["sequential"] = ("promote" if cs.lower > 0 else "rollback", out["ratings"], b.ratings)
            if not out["naive_every"]:
                out["naive_every"] = two_proportion_test(b.ups, b.ratings, a.ups, a.ratings).p_value < ALPHA
        if per_day and (c + 1) % per_day == 0 and min(arms["control"].ratings, arms["canary"].ratings):
            a, b = arms["control"], arms["canary"]
            out["naive_daily"] |= two_proportion_test(b.ups, b.ratings, a.ups, a.ratings).p_value < ALPHA
        if out["sequential"] is not None and out["naive_every"]:
            break
    return out


def part_b(seed: int, runs: int = 200, conversations: int = 3000) -> str:
    rng = random.Random(seed)
    started = time.perf_counter()
    results = [experiment(rng, 0.6, 0.6, conversations) for _ in range(runs)]
    promoted = sum(1 for r in results if r["sequential"] and r["sequential"][0] == "promote")
    any_decision = sum(1 for r in results if r["sequential"])
    every = sum(1 for r in results if r["naive_every"])
    daily = sum(1 for r in results if r["naive_daily"])
    return (
        f"**(b) A/A: {runs} experiments**, canary = control (👍 0.60, per-user rates Beta-distributed, 1–4 "
        f"ratings per conversation), {FRACTION:.0%} canary, at most {conversations} conversations each, "
        f"decision checked after every rating ({time.perf_counter() - started:.0f} s):\n\n"
        "| procedure | false promotions | any false decision |\n|---|---:|---:|\n"
        f"| anytime-valid sequence (refine) | **{promoted}/{runs} = {promoted / runs:.1%}** | "
        f"{any_decision}/{runs} = {any_decision / runs:.1%} |\n"
        f"| z-test, looked at after every rating | – | {every}/{runs} = {every / runs:.1%} |\n"
        f"| z-test, looked at daily for 30 days | – | {daily}/{runs} = {daily / runs:.1%} |\n"
    )


def part_c(seed: int, runs: int = 100, conversations: int = 20000) -> str:
    rows = []
    for p_canary in (0.5, 0.4):
        rng = random.Random(seed + int(p_canary * 100))
        results = [experiment(rng, 0.6, p_canary, conversations) for _ in range(runs)]
        rolled = [r["sequential"] for r in results if r["sequential"] and r["sequential"][0] == "rollback"]
        total = [t for _, t, _ in rolled]
        canary = [c for _, _, c in rolled]
        rows.append(f"| 0.60 vs {p_canary:.2f} | {len(rolled)}/{runs} | {statistics.median(total):.0f} "
                    f"({percentile(total, 90):.0f}) | {statistics.median(canary):.0f} ({percentile(canary, 90):.0f}) |")
    return (
        f"**(c) A worse canary** ({FRACTION:.0%} of conversations, {runs} seeded experiments each, checked after "
        "every rating):\n\n| 👍 control vs canary | rolled back | ratings in all until rollback, median (p90) "
        "| of them on the canary, median (p90) |\n|---|---:|---:|---:|\n" + "\n".join(rows) + "\n"
    )


# -- (a): the whole loop in the toy world -----------------------------------------------------------

START = """\
# The bench persona: its prompt asks for two things the simulated users dislike.
id: helper
name: Helper
version: "1.0"
system_prompt: |
  You are Helper, a friendly assistant talking to {user_name}.
  Use plenty of emoji. Write in a formal, ceremonious register.
generation:
  temperature: 0.7
"""


async def part_a(seed: int, rounds: int = 5, traffic: int = 60, max_live: int = 4000) -> str:
    from bot.app import build_runtime
    from bot.domain.messages import ChatRequest, Speaker
    from bot.domain.prompt import example_messages
    from bot.redis_conn import EmbeddedRedis
    from bot.refine.evaluation import Replayer, Scorer
    from bot.refine.manager import ExperimentManager, ExperimentPolicy
    from bot.refine.pipeline import Refiner
    from bot.refine.proposers.fewshot import FewShotProposer
    from bot.refine.proposers.rewrite import RewriteProposer
    from bot.refine.redis_store import RedisRefineStore
    from bot.refine.sim import ReflectiveOptimizer, SimProvider, TasteJudge, Users, traits_in
    from bot.settings import RefineSettings, Settings
    from tests.conftest import free_port

    rng, users, provider = random.Random(seed), Users(), SimProvider()
    tmp = Path(tempfile.mkdtemp(prefix="refine-bench-"))
    (tmp / "personas").mkdir()
    (tmp / "personas" / "helper.yaml").write_text(START)
    server = EmbeddedRedis(tmp / "redis", port=free_port())
    url = server.start()
    settings = Settings(data_dir=tmp / "data", personas_dir=tmp / "personas", redis={"url": url},
                        model={"backend": "scripted"}, refine={"check_interval_s": 0},
                        _env_file=None)  # type: ignore[call-arg]
    conversation = 0
    lines = []

    def expected(pid: str, rt: Any) -> float:
        p = rt.personas.get(pid)
        shots = [m.content for m in example_messages(p) if m.role == "assistant"]
        return users.expected_rate(traits_in(p.system_prompt, shots))

    async def chat(rt: Any, count: int) -> tuple[int, int]:
        nonlocal conversation
        ups = total = 0
        for _ in range(count):
            conversation += 1
            text = "question 0"
            for t in range(2):
                reply = await rt.engine.reply(ChatRequest(f"c{conversation}", Speaker(f"u{conversation}", "Sam"),
                                                          text, persona_id="helper"))
                vote = users.rate(reply.text, rng)
                await rt.engine.rate(reply.reply_id, f"u{conversation}", vote)
                ups, total = ups + (vote > 0), total + 1
                text = users.complaint(reply.text) if vote < 0 else f"question {t + 1}"
        return ups, total

    try:
        async with build_runtime(settings, model_provider=provider) as rt:
            store = RedisRefineStore(rt.redis)
            judge = TasteJudge(users=users)
            cfg = RefineSettings(max_eval_items=30)
            scorer = Scorer(Replayer(provider, settings.memory), lambda p: judge)
            refiner = Refiner(rt.feedback, rt.personas, store, provider, scorer, lambda p: judge, cfg,
                              personas_dir=settings.personas_dir, data_dir=settings.data_dir)
            manager = ExperimentManager(store, rt.feedback, rt.personas,
                                        ExperimentPolicy(fraction=0.2, min_units=MIN_UNITS, n_opt=N_OPT),
                                        settings.data_dir, on_written=rt.personas.reload)
            best = users.best_rate()
            lines.append(f"| start | v{rt.personas.get('helper').version} | {expected('helper', rt):.3f} | – | – |")
            for round_no in range(1, rounds + 1):
                ups, total = await chat(rt, traffic)
                version = rt.personas.get("helper").version
                dataset = await refiner.dataset("helper")
                proposers = [RewriteProposer(ReflectiveOptimizer(), candidates=3),
                             FewShotProposer(scorer, max_examples=2, max_items=8, max_evaluations=8)]
                candidates = await refiner.propose("helper", dataset, proposers)
                if not candidates:
                    lines.append(f"| {round_no} | v{version} | {expected('helper', rt):.3f} | no candidates | – |")
                    continue
                report = await refiner.evaluate("helper", dataset, candidates)
                if report.winner is None:
                    lines.append(f"| {round_no} | v{version} | {expected('helper', rt):.3f} | none passed the gate "
                                 f"| – |")
                    continue
                winner = next(c for c in candidates if c.id == report.winner)
                await manager.start("helper", report, winner)
                outcome, spent = "inconclusive (cap)", 0
                while spent < max_live:
                    await chat(rt, 1)
                    spent += 1
                    decision = await manager.check("helper", apply=True)
                    if decision.action != "continue":
                        outcome = decision.action
                        break
                if outcome == "inconclusive (cap)":
                    await manager.rollback("helper", "bench: live budget spent")
                rt.personas.reload()
                lines.append(f"| {round_no} | v{rt.personas.get('helper').version} | {expected('helper', rt):.3f} | "
                             f"{winner.proposer}: {outcome} after {spent} conversations | {ups / total:.3f} |")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return (
        f"**(a) Lift over rounds** (toy world, seed {seed}; each round: {traffic} rated conversations, dataset, "
        "rewrite (scripted reflective optimiser) + few-shot proposers, gate, a 20 % canary decided after every "
        f"conversation). Best reachable 👍 rate: **{best:.3f}**.\n\n"
        "| round | version after | expected 👍 rate of that version | candidate and live decision | "
        "observed 👍 rate of the round's traffic |\n|---|---|---:|---|---:|\n" + "\n".join(lines) + "\n"
    )


# -- (d): the bundled local model, few-shot proposer ------------------------------------------------

QUESTIONS = ["How are you today?", "What should I eat for lunch?", "Any advice for a rainy day?",
             "What is your favourite colour?", "How do I learn to swim?", "Tell me about your ship.",
             "What time is it?", "Can you recommend a book?", "What's the weather like?", "Do you like music?"]


def pirate_rater(reply: str) -> bool:
    """The simulated users of (d): they want the pirate voice and a short answer."""
    text = reply.lower()
    return any(w in text for w in ("arr", "matey", "ahoy", " ye ")) and len(reply) < 260


async def part_d(seed: int) -> str:
    from bot.app import build_runtime
    from bot.domain.messages import ChatRequest, Speaker
    from bot.models.provider import DefaultModelProvider
    from bot.redis_conn import EmbeddedRedis
    from bot.refine.evaluation import Replayer, Scorer
    from bot.refine.models import judge_for
    from bot.refine.pipeline import Refiner
    from bot.refine.proposers.fewshot import FewShotProposer
    from bot.refine.redis_store import RedisRefineStore
    from bot.settings import RefineSettings, Settings
    from tests.conftest import free_port

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="refine-bench-d-"))
    personas = tmp / "personas"
    (personas / "tests").mkdir(parents=True)
    captain = (REPO / "personas" / "captain.yaml").read_text().replace("max_new_tokens: 96", "max_new_tokens: 32")
    # Start from the prompt without its examples: the loop has to find good ones in the ratings.
    head, _, rest = captain.partition("examples:")
    (personas / "captain.yaml").write_text(head + "generation:" + rest.partition("generation:")[2])
    shutil.copy(REPO / "personas" / "tests" / "captain.yaml", personas / "tests" / "captain.yaml")
    server = EmbeddedRedis(tmp / "redis", port=free_port())
    url = server.start()
    # One torch thread: on a shared 2-core machine two threads run small matmuls far slower.
    settings = Settings(data_dir=REPO / ".cache" / "test-data", personas_dir=personas, redis={"url": url},
                        model={"threads": 1},
                        refine={"check_interval_s": 0, "judge": "persona", "max_eval_items": 6,
                                "validation_fraction": 0.3}, _env_file=None)  # type: ignore[call-arg]
    provider = DefaultModelProvider(settings.model, settings.data_dir)
    started = time.perf_counter()
    try:
        async with build_runtime(settings, model_provider=provider) as rt:
            rated = liked = 0
            for c in range(8):
                for t in range(2):
                    question = QUESTIONS[(c * 2 + t) % len(QUESTIONS)]
                    reply = await rt.engine.reply(ChatRequest(f"d{c}", Speaker(f"u{c}", "Sam"), question,
                                                              persona_id="captain"))
                    for rater in range(1 + (rng.random() < 0.3)):
                        up = pirate_rater(reply.text) if rng.random() < 0.9 else not pirate_rater(reply.text)
                        await rt.engine.rate(reply.reply_id, f"u{c}-{rater}", 1 if up else -1)
                        rated, liked = rated + 1, liked + up
            chat_s = time.perf_counter() - started
            _progress(f"(d) {rated} ratings on 16 replies in {chat_s:.0f} s")
            cfg = RefineSettings(judge="persona", max_eval_items=6)
            judge = judge_for(cfg, provider)
            scorer = Scorer(Replayer(provider, settings.memory), judge)
            refiner = Refiner(rt.feedback, rt.personas, RedisRefineStore(rt.redis), provider, scorer, judge, cfg,
                              personas_dir=personas, data_dir=tmp / "data")
            dataset = await refiner.dataset("captain")
            proposer = FewShotProposer(scorer, max_examples=2, pool=3, max_items=3, max_evaluations=4, keep_ties=True)
            candidates = await refiner.propose("captain", dataset, [proposer])
            _progress(f"(d) few-shot proposer: {len(candidates)} candidate(s) at {time.perf_counter() - started:.0f} s")
            report = await refiner.evaluate("captain", dataset, candidates) if candidates else None
    finally:
        provider.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    s = dataset.summary()
    head = (f"**(d) Real model** (SmolLM2-135M on the CPU, captain persona without its examples, 32 new tokens, "
            f"one torch thread): 16 replies, {rated} ratings ({liked} 👍); dataset {s['train']['replies']} train / "
            f"{s['validation']['replies']} validation replies; {seconds:.0f} s in all ({chat_s:.0f} s chatting).")
    if report is None:
        return head + " The few-shot proposer found no example set that beat the persona on the train split.\n"
    def row(arm: Any, label: str, lift: str, gate: str) -> str:
        v = arm.validation.summary()
        items = arm.validation.items
        decisive = sum(1 for i in items if i.preference.wins not in (0.5,))
        liked_now = sum(pirate_rater(i.reply) for i in items)
        return (f"| {label} | {v['score']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] | {lift} | "
                f"{decisive}/{len(items)} | {liked_now}/{len(items)} | {arm.suite_passed[0]}/{arm.suite_passed[1]} | "
                f"{v['prompt_tokens']:.0f} | {gate} |")

    rows = [row(report.current, "current (no examples)", "–", "–")]
    for arm in report.candidates:
        lift = "-" if arm.lift is None else f"{arm.lift[0]:+.3f} [{arm.lift[1]:+.2f}, {arm.lift[2]:+.2f}]"
        gate = "PASS" if arm.passed else "fail: " + "; ".join(arm.reasons)
        rows.append(row(arm, f"{arm.name} (few-shot, {len(candidates[0].change.examples or ())} examples)", lift, gate))
    return (head + "\n\n| arm | validation judge score [95% CI] | lift | decisive judgements | replies the simulated "
            "raters' rule likes | suite | prompt tokens | gate |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
            + "\n".join(rows) + "\n")


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abcd", help="Which parts to run (default: abcd).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()
    sections = []
    for part in args.parts:
        started = time.perf_counter()
        if part == "a":
            sections.append(asyncio.run(part_a(args.seed)))
        elif part == "b":
            sections.append(part_b(args.seed))
        elif part == "c":
            sections.append(part_c(args.seed))
        elif part == "d":
            sections.append(asyncio.run(part_d(args.seed)))
        print(sections[-1], f"\n({part}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    if args.record:
        body = machine_line() + "\n\n" + "\n".join(sections) + (
            "\nRerun: `.venv/bin/python bench/refine_sim.py --record` (seeded; parts with `--parts abcd`).\n")
        record_section("Refinement loop (bench/refine_sim.py)", body)


if __name__ == "__main__":
    main()
