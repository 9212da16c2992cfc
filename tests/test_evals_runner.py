"""Loading test cases, running them through a bound model, pass-rate tables, JSON and threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from bot.domain.persona import Persona
from bot.errors import ModelError, PersonaFileError
from bot.evals import EvalTarget, ModelResponder, bound_judge, load_suite, load_suite_file, run_evals
from bot.evals.cases import EvalCase
from bot.models.scripted import ScriptedChatModel
from bot.ports import BoundModel

PIRATE = Persona(id="pirate", name="Captain Byte", system_prompt="You are a pirate. You talk to {user_name}.")


class RecordingModel(ScriptedChatModel):
    """Scripted replies that also remember every prompt it was given."""

    seen: list[list[BaseMessage]] = []  # noqa: RUF012 - pydantic field, copied per instance

    def _reply_for(self, messages: list[BaseMessage]) -> str:
        self.seen.append(list(messages))
        return super()._reply_for(messages)


class FakeProvider:
    """A ModelProvider that binds every persona to one given chat model."""

    def __init__(self, model: ScriptedChatModel) -> None:
        self.model = model
        self.bound: list[str] = []

    def bind(self, persona: Persona) -> BoundModel:
        self.bound.append(persona.id)
        return BoundModel(self.model, "scripted", "scripted", None, 4096, lambda t: len(t.split()))


def case(name: str, text: Any, *assertions: dict[str, Any]) -> EvalCase:
    return EvalCase.model_validate({"name": name, "input": text, "assertions": list(assertions)})


async def test_model_responder_builds_the_prompt_like_the_engine() -> None:
    model = RecordingModel(replies=["  Arr!  "])
    responder = ModelResponder(FakeProvider(model), bot_name="bot")
    conversation = [
        {"role": "user", "content": "I lost my map."},
        {"role": "assistant", "content": "A pirate never loses a map!"},
        {"role": "user", "content": "Help me find it."},
    ]
    reply = await responder(PIRATE, case("map", conversation, {"type": "contains", "value": "Arr"}))
    assert reply == "Arr!"
    (prompt,) = model.seen
    assert [m.type for m in prompt] == ["system", "human", "ai", "human"]
    assert prompt[0].content == "You are a pirate. You talk to tester."
    assert [m.content for m in prompt[1:]] == [m["content"] for m in conversation]


async def test_run_evals_pass_rates_repeat_and_variants() -> None:
    # The model cycles through replies; with 2 cases x repeat 3 per variant we know each outcome.
    model = ScriptedChatModel(replies=["Ahoy matey!", "Hello there.", "Ahoy!"])
    cases = (
        case("greets", "Hi", {"type": "starts_with", "value": "ahoy", "ignore_case": True}),
        case("short", "Hi", {"type": "max_length", "chars": 12}),
    )
    terse = PIRATE.model_copy(update={"system_prompt": "Be terse."})
    targets = [EvalTarget(PIRATE, "control", cases), EvalTarget(terse, "terse", cases)]
    seen: list[str] = []
    results = await run_evals(
        targets, ModelResponder(FakeProvider(model)), repeat=3, on_run=lambda r: seen.append(r.case)
    )
    assert len(results.runs) == 12 and len(seen) == 12
    # Replies in order: control greets x3 -> Ahoy matey!, Hello there., Ahoy!  (2/3 pass)
    #                   control short  x3 -> Ahoy matey!, Hello there., Ahoy!  (all <= 12 chars: 3/3)
    by_case = results.by_case()
    assert (
        by_case[("pirate", "control", "greets")].passed,
        by_case[("pirate", "control", "greets")].total,
    ) == (2, 3)
    assert by_case[("pirate", "control", "short")].passed == 3
    totals = results.by_target()
    assert totals[("pirate", "control")].passed == 5 and totals[("pirate", "terse")].total == 6
    assert results.below(0.9) == [("pirate", "control"), ("pirate", "terse")]
    assert results.below(0.8) == []


async def test_results_json_and_text() -> None:
    model = ScriptedChatModel(replies=["Ahoy!", "Nope"])
    cases = (case("greets", "Hi", {"type": "contains", "value": "Ahoy"}),)
    targets = [EvalTarget(PIRATE, "a", cases), EvalTarget(PIRATE, "b", cases)]
    results = await run_evals(targets, ModelResponder(FakeProvider(model)), repeat=2)
    data = json.loads(results.to_json(threshold=0.75))
    assert data["ok"] is False
    assert {(t["variant"], t["passed"], t["total"]) for t in data["targets"]} == {("a", 1, 2), ("b", 1, 2)}
    failed = [r for r in data["runs"] if not r["passed"]]
    assert len(failed) == 2 and failed[0]["checks"][0]["detail"] == "reply does not contain 'Ahoy'"
    text = results.render(threshold=0.75)
    assert "pirate: variants side by side" in text and "a vs b: same pass rate" in text
    assert "FAIL (< 75%)" in text and "- pirate/a/greets#2: contains: reply does not contain 'Ahoy'" in text


async def test_side_by_side_names_the_leader() -> None:
    cases = (case("greets", "Hi", {"type": "contains", "value": "Ahoy"}),)
    good, bad = ScriptedChatModel(replies=["Ahoy!"]), ScriptedChatModel(replies=["Hello"])

    async def responder(persona: Persona, c: EvalCase) -> str:
        model = good if persona.system_prompt.startswith("You are") else bad
        return str((await model.ainvoke("x")).content)

    other = PIRATE.model_copy(update={"system_prompt": "Plain."})
    results = await run_evals([EvalTarget(PIRATE, "v1", cases), EvalTarget(other, "v2", cases)], responder, repeat=20)
    text = results.render(threshold=0.5)
    assert "v1 vs v2: v1 ahead of v2 by 100.0% (p=0.000, significant)" in text


async def test_generation_errors_fail_the_run_not_the_eval() -> None:
    async def flaky(persona: Persona, c: EvalCase) -> str:
        if c.name == "boom":
            raise ModelError("backend down")
        return "fine"

    cases = (
        case("boom", "x", {"type": "contains", "value": "fine"}),
        case("ok", "x", {"type": "contains", "value": "fine"}),
    )
    results = await run_evals([EvalTarget(PIRATE, "default", cases)], flaky)
    boom, ok = results.runs
    assert not boom.passed and boom.error == "ModelError: backend down" and ok.passed


async def test_judge_uses_the_judge_persona_model() -> None:
    judge_persona = Persona(id="judge", name="Judge", system_prompt="Judge.")
    provider = FakeProvider(ScriptedChatModel(replies=["YES"]))
    cases = (case("in-character", "Hi", {"type": "judge", "rubric": "Is it a pirate?"}),)

    async def responder(persona: Persona, c: EvalCase) -> str:
        return "Arr"

    results = await run_evals(
        [EvalTarget(PIRATE, "default", cases)], responder, judge_for=bound_judge(provider, judge_persona)
    )
    assert results.runs[0].passed and provider.bound == ["judge"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_load_suite_from_persona_file_and_tests_dir(tmp_path: Path) -> None:
    write(
        tmp_path / "pirate.yaml",
        "id: pirate\nname: Pirate\nsystem_prompt: Arr\ntests:\n"
        "  - name: a\n    input: Hi\n    assertions: [{type: contains, value: Ahoy}]\n",
    )
    write(tmp_path / "other.yaml", "id: chef\nname: Chef\nsystem_prompt: Cook\ntests: []\n")
    write(
        tmp_path / "tests" / "pirate.yaml",
        "cases:\n  - name: b\n    input: Hi\n    assertions: [{type: max_length, chars: 10}]\n",
    )
    suite = load_suite(tmp_path, "pirate")
    assert [c.name for c in suite.cases] == ["a", "b"]
    assert load_suite(tmp_path, "chef").cases == ()
    assert load_suite(tmp_path, "nobody").cases == ()


def test_load_suite_errors_name_the_file(tmp_path: Path) -> None:
    write(
        tmp_path / "tests" / "pirate.yaml",
        "- name: a\n  input: Hi\n  assertions: [{type: regex, pattern: '('}]\n",
    )
    with pytest.raises(PersonaFileError, match="invalid regular expression") as info:
        load_suite(tmp_path, "pirate")
    assert info.value.path.name == "pirate.yaml" and info.value.field == "cases.0.assertions.0.regex.pattern"
    assert (info.value.line, info.value.column) == (3, 39)  # the pattern itself

    broken = write(tmp_path / "broken.yaml", "cases: [\n")
    with pytest.raises(PersonaFileError, match="invalid YAML"):
        load_suite_file(broken, "pirate")

    dupes = write(tmp_path / "dupes.yaml", "- {name: a, input: x, assertions: [{type: contains, value: y}]}\n" * 2)
    with pytest.raises(PersonaFileError, match="duplicate test case name"):
        load_suite_file(dupes, "pirate")


def test_load_suite_ignores_other_broken_persona_files(tmp_path: Path) -> None:
    persona = write(
        tmp_path / "captain.yml",
        "id: pirate\nname: P\nsystem_prompt: A\n"
        "tests:\n  - {name: a, input: hi, assertions: [{type: contains, value: x}]}\n",
    )
    write(tmp_path / "broken.yaml", "id: [unclosed\n")
    assert [c.name for c in load_suite(tmp_path, "pirate").cases] == ["a"]
    assert [c.name for c in load_suite(tmp_path, "pirate", persona).cases] == ["a"]
    # The registry's file for another persona id holds no cases for this one.
    assert load_suite(tmp_path, "chef", persona).cases == ()
