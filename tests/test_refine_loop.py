"""The whole refinement loop against a real Redis: ratings through the engine and the feedback log ->
dataset -> candidates from a scripted optimiser -> offline gate -> canary written into the persona
file -> sequential decision -> automatic promotion; and the rollback and refusal paths.

The model is bot.refine.sim's prompt-following toy (the test is about the loop, not generation).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Runtime, build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.errors import PersonaFileError
from bot.models.scripted import ScriptedChatModel
from bot.refine.candidates import Candidate, Change
from bot.refine.errors import ExperimentError, GateRejected, OptimizerError, PersonaFileChanged
from bot.refine.evaluation import Replayer, Scorer
from bot.refine.manager import ExperimentManager, ExperimentPolicy
from bot.refine.models import optimizer_model
from bot.refine.personafile import add_canary, next_version
from bot.refine.pipeline import Refiner
from bot.refine.proposers.fewshot import FewShotProposer
from bot.refine.proposers.rewrite import RewriteProposer
from bot.refine.redis_store import RedisRefineStore
from bot.refine.sim import ReflectiveOptimizer, SimProvider, TasteJudge, Users, traits_in
from bot.refine.watcher import RefineWatcher, check_all
from bot.settings import RefineSettings, Settings
from tests.conftest import free_port

PERSONA = """\
# A helper whose prompt asks for something users dislike (emoji).
id: helper
name: Helper
version: "1.0"
system_prompt: |
  You are Helper, a friendly assistant talking to {user_name}.
  Use plenty of emoji.
examples:
  - user: "Hi"
    assistant: "Hello! How can I help?"
generation:
  temperature: 0.7   # sampled, as in production
tests:
  - name: answers
    input: "How do I boil an egg?"
    assertions:
      - {type: contains, value: "answer"}
"""


@pytest.fixture
async def runtime(settings: Settings, personas_dir: Path) -> AsyncIterator[Runtime]:
    (personas_dir / "helper.yaml").write_text(PERSONA)
    async with build_runtime(settings, model_provider=SimProvider()) as rt:
        yield rt


async def traffic(rt: Runtime, users: Users, rng: random.Random, conversations: range, turns: int = 2) -> None:
    """Simulated users chat and rate every reply (1–2 raters each)."""
    for c in conversations:
        text = f"question 0 of {c}"
        for t in range(turns):
            reply = await rt.engine.reply(ChatRequest(f"conv{c}", Speaker(f"u{c}", "Sam"), text, persona_id="helper"))
            votes = [users.rate(reply.text, rng) for _ in range(1 + (rng.random() < 0.3))]
            for rater, vote in enumerate(votes):
                await rt.engine.rate(reply.reply_id, f"u{c}-{rater}", vote)
            # After a reply they dislike, users say what bothered them (the optimiser reads it).
            text = users.complaint(reply.text) if sum(votes) < 0 else f"question {t + 1} of {c}"


def refiner_for(rt: Runtime, provider: SimProvider, judge: TasteJudge, **settings: object) -> Refiner:
    cfg = RefineSettings(max_eval_items=20, **settings)  # type: ignore[arg-type]
    scorer = Scorer(Replayer(provider, rt.settings.memory), lambda persona: judge)
    return Refiner(rt.feedback, rt.personas, RedisRefineStore(rt.redis), provider, scorer, lambda p: judge, cfg,
                   personas_dir=rt.settings.personas_dir, data_dir=rt.settings.data_dir)


def manager_for(rt: Runtime, **policy: object) -> ExperimentManager:
    return ExperimentManager(RedisRefineStore(rt.redis), rt.feedback, rt.personas,
                             ExperimentPolicy(**{"fraction": 0.5, "min_units": 10, "n_opt": 200.0, **policy}),  # type: ignore[arg-type]
                             rt.settings.data_dir, on_written=rt.personas.reload)


async def decide_live(rt: Runtime, manager: ExperimentManager, users: Users, rng: random.Random, start: int,
                      limit: int = 1500) -> tuple[str, int]:
    """More traffic, with the automatic decision checked after every conversation."""
    for c in range(start, start + limit):
        await traffic(rt, users, rng, range(c, c + 1))
        decision = await manager.check("helper", apply=True)
        if decision.action != "continue":
            return decision.action, c - start + 1
    raise AssertionError("no decision")


async def test_ratings_to_promotion_end_to_end(runtime: Runtime, personas_dir: Path) -> None:
    rng, users, provider = random.Random(7), Users(), SimProvider()
    await traffic(runtime, users, rng, range(40))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))

    dataset = await refiner.dataset("helper")
    train_convs = {i.conversation_id for i in dataset.train}
    assert train_convs and dataset.validation
    assert not train_convs & {i.conversation_id for i in dataset.validation}  # split by conversation
    assert any(i.weight == 2 for i in dataset.items)  # two raters weigh twice
    assert any(i.next_user for i in dataset.items)  # the user's next message is recovered
    assert all(i.history == () or i.history[0].role == "user" for i in dataset.items)  # examples stripped
    assert len(dataset.cases) == 1

    optimizer = ReflectiveOptimizer()
    candidates = await refiner.propose("helper", dataset, [RewriteProposer(optimizer, candidates=3)])
    assert candidates and optimizer.calls == 1
    report = await refiner.evaluate("helper", dataset, candidates)
    assert report.winner is not None, report.render_text()
    winner = next(c for c in candidates if c.id == report.winner)
    current = runtime.personas.get("helper")
    assert users.expected_rate(traits_in(winner.change.system_prompt or "")) > users.expected_rate(
        traits_in(current.system_prompt))  # truly better for the hidden taste
    assert "gate" in report.render_text() and report.to_dict()["winner"] == winner.id

    manager = manager_for(runtime)
    before = (personas_dir / "helper.yaml").read_text()
    experiment = await manager.start("helper", report, winner)
    text = (personas_dir / "helper.yaml").read_text()
    assert text.startswith(before.split("tests:")[0].rstrip("\n")[:60])  # layout and comments kept
    assert "# A helper whose prompt" in text and "# sampled, as in production" in text
    assert f"# refine canary {winner.id}" in text and "- id: control" in text
    helper = runtime.personas.get("helper")
    assert [v.id for v in helper.variants] == ["control", winner.id]

    action, conversations = await decide_live(runtime, manager, users, rng, 1000)
    assert action == "promote", action
    runtime.personas.reload()
    promoted = runtime.personas.get("helper")
    assert promoted.version == "1.1" and promoted.variants == ()
    assert promoted.system_prompt.strip() == (winner.change.system_prompt or "").strip()
    final = (personas_dir / "helper.yaml").read_text()
    assert "# A helper whose prompt" in final and "tests:" in final and "refine canary" in final
    kept = runtime.settings.data_dir / "refine" / "helper" / "versions" / "v1.0.yaml"
    assert kept.read_text() == text  # the old version, with its canary, is kept
    store = RedisRefineStore(runtime.redis)
    kinds = [e.kind for e in await store.entries("helper", 50)]
    assert kinds == ["dataset", "proposed", "gate", "canary", "promoted"]
    assert await store.experiment("helper") is None
    attempts = await store.attempts("helper")
    assert any(a.candidate == winner.id and a.outcome == "promoted" for a in attempts)
    assert experiment.canary == winner.id and conversations < 1500


async def test_a_worse_canary_is_rolled_back(runtime: Runtime, personas_dir: Path) -> None:
    """The offline judge can be wrong (it likes ceremony users hate): the live test catches it."""
    rng, users, provider = random.Random(3), Users(), SimProvider()
    await traffic(runtime, users, rng, range(30))
    fooled = TasteJudge(users=Users(weights={"formal": 0.5, "emoji": -0.18}))
    refiner = refiner_for(runtime, provider, fooled)
    dataset = await refiner.dataset("helper")
    persona = runtime.personas.get("helper")
    worse = Candidate.create(persona, Change(system_prompt=persona.system_prompt + "Write in a formal, ceremonious "
                                             "register.\n"), "hand")
    report = await refiner.evaluate("helper", dataset, [worse])
    assert report.winner == worse.id
    manager = manager_for(runtime)
    await manager.start("helper", report, worse)
    action, _ = await decide_live(runtime, manager, users, rng, 1000)
    assert action == "rollback"
    assert (personas_dir / "helper.yaml").read_text() == PERSONA  # exactly as before
    entries = await RedisRefineStore(runtime.redis).entries("helper")
    assert entries[-1].kind == "rolled_back" and "worse" in entries[-1].summary


async def test_a_candidate_that_fails_the_gate_never_reaches_users(runtime: Runtime, personas_dir: Path) -> None:
    rng, users, provider = random.Random(4), Users(), SimProvider()
    await traffic(runtime, users, rng, range(30))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))
    dataset = await refiner.dataset("helper")
    persona = runtime.personas.get("helper")
    worse = Candidate.create(persona, Change(system_prompt=persona.system_prompt + "Write in a formal, ceremonious "
                                             "register.\n"), "hand")
    report = await refiner.evaluate("helper", dataset, [worse])
    assert report.winner is None and not report.candidates[0].passed
    with pytest.raises(GateRejected, match="did not pass"):
        await manager_for(runtime).start("helper", report, worse)
    assert (personas_dir / "helper.yaml").read_text() == PERSONA
    assert await RedisRefineStore(runtime.redis).experiment("helper") is None


async def test_few_shot_proposer_picks_liked_replies(runtime: Runtime) -> None:
    rng, users, provider = random.Random(9), Users(weights={"brief": 0.3}), SimProvider()
    await traffic(runtime, users, rng, range(30))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))
    dataset = await refiner.dataset("helper")
    proposer = FewShotProposer(refiner.scorer, max_examples=2, max_items=6, max_evaluations=6)
    persona = runtime.personas.get("helper")
    found = await proposer.propose(persona, dataset, [])
    for candidate in found:
        assert candidate.change.examples is not None and len(candidate.change.examples) > len(persona.examples)
        liked = {i.reply for i in dataset.train if i.liked}
        assert all(e.assistant in liked for e in candidate.change.examples[len(persona.examples):])
        assert candidate.data["scored_on"] and not set(candidate.data["examples_from"]) & {
            i.reply_id for i in dataset.validation}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("", "empty answer"),
        ("x" * 200_000, "-character answer"),
        ("<prompt>Hello {user}, {oops</prompt>", "broken template"),
        ("<prompt>" + "y" * 5000 + "</prompt>", "characters (limit"),
        ("Sure! Here is a better prompt: be nice.", "no <prompt>"),
    ],
)
async def test_bad_optimiser_output_is_a_clear_error_and_changes_nothing(
    runtime: Runtime, personas_dir: Path, answer: str, message: str
) -> None:
    rng = random.Random(1)
    await traffic(runtime, Users(), rng, range(12))
    refiner = refiner_for(runtime, SimProvider(), TasteJudge())
    dataset = await refiner.dataset("helper")
    store = RedisRefineStore(runtime.redis)
    journal = await store.entries("helper")
    with pytest.raises(OptimizerError, match=re.escape(message)):
        await refiner.propose("helper", dataset, [RewriteProposer(ScriptedChatModel(replies=[answer]))])
    assert (personas_dir / "helper.yaml").read_text() == PERSONA
    assert await store.entries("helper") == journal
    assert not (runtime.settings.data_dir / "refine" / "helper" / "candidates.json").exists()


async def test_unreachable_optimiser_server(runtime: Runtime) -> None:
    cfg = RefineSettings(optimizer_base_url=f"http://127.0.0.1:{free_port()}/v1", optimizer_timeout=3)
    model, label = optimizer_model(cfg, SimProvider())
    await traffic(runtime, Users(), random.Random(2), range(12))
    refiner = refiner_for(runtime, SimProvider(), TasteJudge())
    dataset = await refiner.dataset("helper")
    with pytest.raises(OptimizerError, match=re.escape("127.0.0.1")):
        await refiner.propose("helper", dataset, [RewriteProposer(model, label=label)])


async def test_status_shows_in_feedback_report_and_discord_summary(runtime: Runtime) -> None:
    from bot.feedback.report import build_report, render_html
    from bot.transports.discord.feedback_summary import feedback_text

    rng, users, provider = random.Random(7), Users(), SimProvider()
    await traffic(runtime, users, rng, range(30))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))
    dataset = await refiner.dataset("helper")
    candidates = await refiner.propose("helper", dataset, [RewriteProposer(ReflectiveOptimizer(), candidates=3)])
    report = await refiner.evaluate("helper", dataset, candidates)
    assert report.winner
    manager = manager_for(runtime)
    await manager.start("helper", report, next(c for c in candidates if c.id == report.winner))
    await traffic(runtime, users, rng, range(100, 110))
    decisions = await check_all(manager)  # what the bot's watcher (and `status --apply`) runs
    assert decisions["helper"].action == "continue"  # type: ignore[union-attr]
    feedback = await build_report(runtime.feedback, persona_id="helper", refine=RedisRefineStore(runtime.redis))
    text = feedback.render_text()
    assert f"canary {report.winner}" in text and "burn-in" in text
    from bot.refine.pipeline import latest_gate_html

    gates = latest_gate_html(runtime.settings.data_dir, [r.persona for r in feedback.refine])
    page = render_html(feedback, gate_html=gates)
    assert "Refinement" in page and "Offline gate: helper v1.0" in page and report.winner in page
    assert json.loads(feedback.to_json())["refine"][0]["experiment"]["canary"] == report.winner
    summary = await feedback_text(runtime.feedback, runtime.personas.get("helper"), refine=runtime.refine)
    assert f"canary {report.winner}" in summary and len(summary) <= 1900


async def test_persona_file_edits_are_validated_atomic_and_refuse_concurrent_changes(
    runtime: Runtime, personas_dir: Path
) -> None:
    path = personas_dir / "helper.yaml"
    persona: Persona = runtime.personas.get("helper")
    good = Candidate.create(persona, Change(generation={"temperature": 0.2}), "hand")
    bad = Candidate(good.id, "hand", "1.0", Change(generation={"temperature": 9.0}))
    with pytest.raises(PersonaFileError, match="temperature"):
        add_canary(path, bad, 0.1, note="x")
    assert path.read_text() == PERSONA
    assert not list(personas_dir.glob(".*tmp"))
    # A concurrent edit between read and write: nothing is written.
    import bot.refine.personafile as pf

    original = pf.parse_persona

    def racing(p: Path, text: str) -> Persona:
        path.write_text(PERSONA.replace("Helper,", "Helper (edited),"))
        return original(p, text)

    pf.parse_persona = racing  # type: ignore[assignment]
    try:
        with pytest.raises(PersonaFileChanged):
            add_canary(path, good, 0.1, note="x")
    finally:
        pf.parse_persona = original
    assert "edited" in path.read_text() and "variants" not in path.read_text()


def test_next_version() -> None:
    assert [next_version(v) for v in ("1.0", "2", "1.9", "beta", "v3-rc1")] == ["1.1", "3", "1.10", "beta.1",
                                                                                 "v3-rc2"]


async def test_the_watcher_survives_a_failing_tick() -> None:
    """A tick that raises is logged and the next tick runs: the task never dies of it."""
    second = asyncio.Event()

    class Flaky:
        calls = 0

        async def running(self) -> list[object]:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("Redis hiccup")
            second.set()
            return []

    class Manager:
        store = Flaky()

    watcher = RefineWatcher(Manager(), 0.001)  # type: ignore[arg-type]
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(second.wait(), timeout=5)
    finally:
        task.cancel()
    assert (Flaky.calls >= 2 and not task.done()) or task.cancelled()


def test_examples_of_a_removed_variant_are_told_apart_from_history() -> None:
    from bot.domain.feedback import ReplyRecord
    from bot.refine.dataset import shared_examples, split_prompt

    persona = Persona(id="p", name="P", system_prompt="Be P.")

    def record(conversation: str, turns: list[tuple[str, str]]) -> ReplyRecord:
        messages = [{"role": "system", "content": "Be P."}]
        for role, text in turns:
            messages.append({"role": role, "content": text})
        return ReplyRecord("r" + conversation, conversation, "u", "p", "1", "m", "scripted", None, {}, messages,
                           "reply", 0.1, None, 1, 1, "h", variant="refine-gone")

    shots = [("user", "Hi"), ("assistant", "Hello!")]
    a = record("a", [*shots, ("user", "one"), ("assistant", "1"), ("user", "two")])
    b = record("b", [*shots, ("user", "three")])
    assert shared_examples([a, b]) == 2
    assert shared_examples([a]) == 0  # one conversation: cannot tell examples from its history
    history, text = split_prompt(a, persona, 2) or ((), "")
    assert [m.content for m in history] == ["one", "1"] and text == "two"


async def test_approval_mode_waits_for_a_person(runtime: Runtime, personas_dir: Path) -> None:
    rng, users, provider = random.Random(7), Users(), SimProvider()
    await traffic(runtime, users, rng, range(40))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))
    dataset = await refiner.dataset("helper")
    candidates = await refiner.propose("helper", dataset, [RewriteProposer(ReflectiveOptimizer(), candidates=3)])
    report = await refiner.evaluate("helper", dataset, candidates)
    assert report.winner
    manager = manager_for(runtime, approve=True)
    await manager.start("helper", report, next(c for c in candidates if c.id == report.winner))
    with pytest.raises(ExperimentError, match="not won yet"):
        await manager.promote("helper")
    action, _ = await decide_live(runtime, manager, users, rng, 1000)
    assert action == "await_approval"
    canary_file = (personas_dir / "helper.yaml").read_text()
    assert report.winner in canary_file  # nothing promoted yet
    assert (await manager.check("helper", apply=True)).action == "await_approval"  # and no second journal entry
    kinds = [e.kind for e in await RedisRefineStore(runtime.redis).entries("helper")]
    assert kinds.count("awaiting_approval") == 1
    promoted = await manager.promote("helper")
    assert promoted.version == "1.1" and promoted.variants == ()
    assert "v1.0 -> v1.1: refine canary" in (personas_dir / "helper.yaml").read_text()


async def test_one_canary_at_a_time_and_a_failed_write_leaves_no_experiment(
    runtime: Runtime, personas_dir: Path
) -> None:
    rng, users, provider = random.Random(7), Users(), SimProvider()
    await traffic(runtime, users, rng, range(40))
    refiner = refiner_for(runtime, provider, TasteJudge(users=users))
    dataset = await refiner.dataset("helper")
    candidates = await refiner.propose("helper", dataset, [RewriteProposer(ReflectiveOptimizer(), candidates=3)])
    report = await refiner.evaluate("helper", dataset, candidates)
    winner = next(c for c in candidates if c.id == report.winner)
    manager = manager_for(runtime)
    store = RedisRefineStore(runtime.redis)
    (personas_dir / "helper.yaml").write_text(PERSONA.replace('version: "1.0"', 'version: "1.0"\nbogus: 1'))
    with pytest.raises(PersonaFileError):  # the file no longer validates: nothing written, nothing started
        await manager.start("helper", report, winner)
    assert await store.experiment("helper") is None
    (personas_dir / "helper.yaml").write_text(PERSONA)
    await manager.start("helper", report, winner)
    with pytest.raises(ExperimentError, match="already has a canary"):
        await manager.start("helper", report, winner)
    await manager.rollback("helper", "changed my mind")
    assert (personas_dir / "helper.yaml").read_text() == PERSONA
    assert (await store.entries("helper"))[-1].summary.endswith("changed my mind")


def test_canary_beside_an_existing_ab_test(tmp_path: Path) -> None:
    from bot.personas.loader import load_persona_file
    from bot.refine.personafile import promote_canary, remove_canary

    text = PERSONA + ("variants:\n  - {id: a, weight: 3}  # the running A/B test\n"
                      "  - {id: b, weight: 1, system_prompt: \"Be B.\"}\n")
    path = tmp_path / "helper.yaml"
    path.write_text(text)
    persona = load_persona_file(path)
    candidate = Candidate.create(persona, Change(examples=({"user": "Hi", "assistant": "Hey!"},)), "hand")  # type: ignore[arg-type]
    _, added = add_canary(path, candidate, 0.2, note="canary")
    assert not added  # the existing variants keep their weights; the canary gets 20 % of the total
    loaded = load_persona_file(path)
    assert [(v.id, v.weight) for v in loaded.variants] == [("a", 3.0), ("b", 1.0), (candidate.id, 1.0)]
    assert loaded.with_variant(candidate.id).examples[0].assistant == "Hey!"
    remove_canary(path, candidate.id, added)
    assert path.read_text() == text  # byte for byte, comments included
    add_canary(path, candidate, 0.2, note="canary")
    promoted, _ = promote_canary(path, candidate.id, False, note="promoted")
    assert promoted.version == "1.1" and promoted.examples[0].assistant == "Hey!"
    assert [v.id for v in promoted.variants] == ["a", "b"] and "# the running A/B test" in path.read_text()
