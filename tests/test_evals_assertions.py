"""Each eval assertion kind, passing and failing, plus the similarity metrics and judge parsing."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from bot.evals.assertions import check
from bot.evals.cases import Assertion, CaseMessage, EvalCase
from bot.evals.judge import judge_messages, parse_verdict
from bot.evals.similarity import cosine, lcs_length, rouge_l, tokens
from bot.models.scripted import ScriptedChatModel

ASSERTION = TypeAdapter(Assertion)
CONVERSATION = (CaseMessage(role="user", content="Who are you?"),)
REPLY = "Ahoy, matey! I be Captain Byte, scourge of the seven servers."


async def run(spec: dict[str, object], reply: str = REPLY, judge: ScriptedChatModel | None = None) -> bool:
    result = await check(ASSERTION.validate_python(spec), reply, CONVERSATION, judge)
    assert result.kind == spec["type"] and result.detail
    return result.passed


async def test_contains() -> None:
    assert await run({"type": "contains", "value": "Captain Byte"})
    assert not await run({"type": "contains", "value": "captain byte"})
    assert await run({"type": "contains", "value": "captain byte", "ignore_case": True})
    assert not await run({"type": "contains", "value": "admiral", "ignore_case": True})


async def test_not_contains() -> None:
    assert await run({"type": "not_contains", "value": "as an AI"})
    assert not await run({"type": "not_contains", "value": "Ahoy"})
    assert await run({"type": "not_contains", "value": "AHOY"})
    assert not await run({"type": "not_contains", "value": "AHOY", "ignore_case": True})


async def test_regex() -> None:
    assert await run({"type": "regex", "pattern": r"^Ahoy\b"})
    assert not await run({"type": "regex", "pattern": r"servers$!"})
    assert not await run({"type": "regex", "pattern": r"^ahoy"})
    assert await run({"type": "regex", "pattern": r"^ahoy", "ignore_case": True})
    with pytest.raises(ValidationError, match="invalid regular expression"):
        ASSERTION.validate_python({"type": "regex", "pattern": "(unclosed"})


async def test_max_length() -> None:
    assert await run({"type": "max_length", "chars": len(REPLY)})
    assert not await run({"type": "max_length", "chars": len(REPLY) - 1})
    assert await run({"type": "max_length", "words": 11})
    assert not await run({"type": "max_length", "words": 10})
    assert not await run({"type": "max_length", "chars": 1000, "words": 3})
    with pytest.raises(ValidationError, match="needs `chars` and/or `words`"):
        ASSERTION.validate_python({"type": "max_length"})


async def test_starts_with() -> None:
    assert await run({"type": "starts_with", "value": "Ahoy"})
    assert await run({"type": "starts_with", "value": "Ahoy"}, reply="\n  Ahoy there")
    assert not await run({"type": "starts_with", "value": "ahoy"})
    assert await run({"type": "starts_with", "value": "ahoy", "ignore_case": True})
    assert not await run({"type": "starts_with", "value": "Hello", "ignore_case": True})


async def test_similarity() -> None:
    reference = "Ahoy matey, I am Captain Byte, the scourge of the seven servers!"
    assert await run({"type": "similarity", "reference": reference, "min_score": 0.7})
    assert not await run({"type": "similarity", "reference": "The weather is nice today.", "min_score": 0.2})
    assert await run({"type": "similarity", "reference": reference, "metric": "cosine", "min_score": 0.7})
    assert not await run({"type": "similarity", "reference": reference, "min_score": 0.99})


def test_rouge_l_matches_lin_2004_examples() -> None:
    # Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries", section 3.1:
    # reference "police killed the gunman"; S2 scores 3/4, S3 scores 2/4 (recall = precision).
    reference = "police killed the gunman"
    assert rouge_l("police kill the gunman", reference) == pytest.approx(0.75)
    assert rouge_l("the gunman kill police", reference) == pytest.approx(0.5)
    assert rouge_l("same words", "same words") == pytest.approx(1.0)
    assert rouge_l("", reference) == 0.0


def test_cosine_and_tokens() -> None:
    # Counts: the×2 cat on mat shared; sat vs is differ: 7 / (sqrt 8 · sqrt 8).
    assert cosine("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(7 / 8)
    assert cosine("a b", "c d") == 0.0
    assert cosine("word order does not matter", "matter not does order word") == pytest.approx(1.0)
    assert rouge_l("word order does not matter", "matter not does order word") < 0.5
    assert tokens("Héllo, WORLD! 42") == ["héllo", "world", "42"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # CLRS textbook example


def test_parse_verdict() -> None:
    assert parse_verdict("YES") is True
    assert parse_verdict("No, the reply breaks character.") is False
    assert parse_verdict("  yes.") is True
    assert parse_verdict("Yesterday I would have said") is None  # 'yes' must stand alone
    assert parse_verdict("I cannot tell") is None


async def test_judge_pass_and_fail() -> None:
    rubric = "Does the reply stay in character as a pirate?"
    assert await run({"type": "judge", "rubric": rubric}, judge=ScriptedChatModel(replies=["YES, it does."]))
    assert not await run({"type": "judge", "rubric": rubric}, judge=ScriptedChatModel(replies=["No."]))
    assert await run(
        {"type": "judge", "rubric": rubric, "expect": "no"}, judge=ScriptedChatModel(replies=["no"])
    )
    assert not await run({"type": "judge", "rubric": rubric}, judge=ScriptedChatModel(replies=["Perhaps?"]))
    assert not await run({"type": "judge", "rubric": rubric}, judge=None)


async def test_judge_failure_is_a_failed_assertion() -> None:
    broken = ScriptedChatModel(fail_on="Question")
    result = await check(
        ASSERTION.validate_python({"type": "judge", "rubric": "ok?"}), REPLY, CONVERSATION, broken
    )
    assert not result.passed and "judge failed" in result.detail


def test_judge_prompt_shows_conversation_reply_and_rubric() -> None:
    messages = judge_messages("Is it polite?", CONVERSATION, "Arr, hello.")
    assert messages[0].type == "system" and "YES or NO" in str(messages[0].content)
    asked = str(messages[1].content)
    assert "USER: Who are you?" in asked and "Arr, hello." in asked and "Is it polite?" in asked


def test_case_model() -> None:
    case = EvalCase.model_validate(
        {"name": "hi", "input": "Hello", "assertions": [{"type": "contains", "value": "x"}]}
    )
    assert case.input == (CaseMessage(role="user", content="Hello"),) and not case.needs_judge
    with pytest.raises(ValidationError, match="end with a user message"):
        EvalCase.model_validate(
            {
                "name": "bad",
                "input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "assertions": [{"type": "contains", "value": "x"}],
            }
        )
    with pytest.raises(ValidationError):
        EvalCase.model_validate({"name": "t", "input": "x", "assertions": [{"type": "sounds_good"}]})
    with pytest.raises(ValidationError):
        EvalCase.model_validate({"name": "t", "input": "x", "assertions": []})
