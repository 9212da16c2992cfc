"""Prompt test cases: an input conversation and assertions on the reply, as written in YAML.

tests:
  - name: greets-in-character
    input: "Hello, who are you?"           # or a list of {role, content} ending with the user
    assertions:
      - {type: contains, value: "ahoy", ignore_case: true}
      - {type: not_contains, value: "as an AI"}
      - {type: regex, pattern: "^[A-Z]"}
      - {type: max_length, chars: 400}
      - {type: starts_with, value: "Ahoy", ignore_case: true}
      - {type: judge, rubric: "Does the reply stay in character as a pirate?"}
      - {type: similarity, reference: "Ahoy! I be Captain Byte.", min_score: 0.3}
"""

from __future__ import annotations

from typing import Annotated, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CASE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contains(_Strict):
    type: Literal["contains"]
    value: str = Field(min_length=1)
    ignore_case: bool = False


class NotContains(_Strict):
    type: Literal["not_contains"]
    value: str = Field(min_length=1)
    ignore_case: bool = False


class Regex(_Strict):
    """Passes when the pattern is found anywhere in the reply (a search); anchor it with ^...$.

    Patterns use the `regex` module (a superset of `re`) and run with a time limit, so a
    catastrophic pattern such as `(a+)+b` fails its assertion instead of hanging the eval."""

    type: Literal["regex"]
    pattern: str = Field(min_length=1)
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            regex.compile(pattern)
        except (regex.error, ValueError, OverflowError, RecursionError) as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        return pattern


class MaxLength(_Strict):
    type: Literal["max_length"]
    chars: int | None = Field(default=None, ge=1)
    words: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_limit(self) -> MaxLength:
        if self.chars is None and self.words is None:
            raise ValueError("max_length needs `chars` and/or `words`")
        return self


class StartsWith(_Strict):
    """Leading whitespace of the reply is ignored."""

    type: Literal["starts_with"]
    value: str = Field(min_length=1)
    ignore_case: bool = False


class Judge(_Strict):
    """Ask a judge model a yes/no question about the reply; passes when it answers `expect`."""

    type: Literal["judge"]
    rubric: str = Field(min_length=1)
    expect: Literal["yes", "no"] = "yes"


class Similarity(_Strict):
    """Lexical similarity to a reference answer (see bot.evals.similarity for the metrics)."""

    type: Literal["similarity"]
    reference: str = Field(min_length=1)
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    metric: Literal["rouge_l", "cosine"] = "rouge_l"


Assertion = Annotated[
    Contains | NotContains | Regex | MaxLength | StartsWith | Judge | Similarity,
    Field(discriminator="type"),
]


class CaseMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class EvalCase(_Strict):
    name: str = Field(pattern=CASE_NAME_PATTERN)
    description: str = ""
    #: The conversation so far; a plain string is one user message.
    input: tuple[CaseMessage, ...]
    user_name: str = Field(default="tester", min_length=1)
    channel: str = "direct messages"
    assertions: tuple[Assertion, ...] = Field(min_length=1)

    @field_validator("input", mode="before")
    @classmethod
    def _text_is_one_user_message(cls, value: object) -> object:
        return ({"role": "user", "content": value},) if isinstance(value, str) else value

    @field_validator("input")
    @classmethod
    def _ends_with_user(cls, messages: tuple[CaseMessage, ...]) -> tuple[CaseMessage, ...]:
        if not messages or messages[-1].role != "user":
            raise ValueError("the input conversation must end with a user message")
        return messages

    @property
    def needs_judge(self) -> bool:
        return any(isinstance(a, Judge) for a in self.assertions)


class EvalSuite(_Strict):
    """The test cases of one persona."""

    persona: str
    cases: tuple[EvalCase, ...]
    #: Where the cases came from (for messages); not part of the file format.
    source: str = ""

    @field_validator("cases")
    @classmethod
    def _unique_names(cls, cases: tuple[EvalCase, ...]) -> tuple[EvalCase, ...]:
        seen: set[str] = set()
        for case in cases:
            if case.name in seen:
                raise ValueError(f"duplicate test case name {case.name!r}")
            seen.add(case.name)
        return cases
