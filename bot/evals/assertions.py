"""Checking one assertion against one reply. Every check says why it passed or failed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import regex

from bot.evals.cases import (
    Assertion,
    CaseMessage,
    Contains,
    Judge,
    MaxLength,
    NotContains,
    Regex,
    Similarity,
    StartsWith,
)
from bot.evals.judge import ask_judge
from bot.evals.similarity import similarity

if TYPE_CHECKING:
    from langchain_core.language_models.chat_models import BaseChatModel


@dataclass(frozen=True, slots=True)
class AssertionResult:
    kind: str
    passed: bool
    detail: str
    score: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "passed": self.passed, "detail": self.detail, "score": self.score}


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def check_contains(a: Contains | NotContains, reply: str) -> AssertionResult:
    found = _fold(a.value, a.ignore_case) in _fold(reply, a.ignore_case)
    want = isinstance(a, Contains)
    verb = "contains" if found else "does not contain"
    return AssertionResult(a.type, found == want, f"reply {verb} {a.value!r}")


#: Seconds one regex assertion may run (a catastrophic pattern fails instead of hanging).
REGEX_TIMEOUT_S = 1.0


def check_regex(a: Regex, reply: str, timeout: float = REGEX_TIMEOUT_S) -> AssertionResult:
    try:
        match = regex.search(a.pattern, reply, regex.IGNORECASE if a.ignore_case else 0, timeout=timeout)
    except TimeoutError:
        return AssertionResult(a.type, False, f"/{a.pattern}/ gave up after {timeout:g} s (catastrophic pattern?)")
    detail = f"/{a.pattern}/ matched {match.group(0)!r}" if match else f"/{a.pattern}/ did not match"
    return AssertionResult(a.type, match is not None, detail)


def check_max_length(a: MaxLength, reply: str) -> AssertionResult:
    chars, words = len(reply), len(reply.split())
    too_long = (a.chars is not None and chars > a.chars) or (a.words is not None and words > a.words)
    limits = ", ".join(f"{n} max {k}" for k, n in (("chars", a.chars), ("words", a.words)) if n is not None)
    return AssertionResult(a.type, not too_long, f"{chars} chars, {words} words ({limits})")


def check_starts_with(a: StartsWith, reply: str) -> AssertionResult:
    start = reply.lstrip()
    ok = _fold(start, a.ignore_case).startswith(_fold(a.value, a.ignore_case))
    return AssertionResult(a.type, ok, f"reply starts with {start[: len(a.value) + 10]!r}")


def check_similarity(a: Similarity, reply: str) -> AssertionResult:
    score = similarity(reply, a.reference, a.metric)
    return AssertionResult(a.type, score >= a.min_score, f"{a.metric} {score:.3f} (min {a.min_score})", score)


async def check_judge(
    a: Judge, reply: str, conversation: Sequence[CaseMessage], judge: BaseChatModel | None
) -> AssertionResult:
    if judge is None:
        return AssertionResult(a.type, False, "no judge model configured")
    try:
        verdict = await ask_judge(judge, a.rubric, conversation, reply)
    except Exception as exc:  # a broken judge fails this assertion, not the whole run
        return AssertionResult(a.type, False, f"judge failed: {exc}")
    if verdict.answer is None:
        return AssertionResult(a.type, False, f"judge gave no yes/no answer: {verdict.raw[:120]!r}")
    said = "yes" if verdict.answer else "no"
    return AssertionResult(a.type, said == a.expect, f"judge said {said} (expected {a.expect}): {a.rubric}")


async def check(
    a: Assertion, reply: str, conversation: Sequence[CaseMessage], judge: BaseChatModel | None = None
) -> AssertionResult:
    match a:
        case Contains() | NotContains():
            return check_contains(a, reply)
        case Regex():
            return check_regex(a, reply)
        case MaxLength():
            return check_max_length(a, reply)
        case StartsWith():
            return check_starts_with(a, reply)
        case Similarity():
            return check_similarity(a, reply)
        case Judge():
            return await check_judge(a, reply, conversation, judge)
    raise TypeError(f"unknown assertion {a!r}")  # pragma: no cover - the union is exhaustive
