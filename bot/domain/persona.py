"""The persona: a hard prompt (system prompt, examples, greeting) plus how to generate.

Pure data with validation; loading from files lives in `bot.personas`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bot.domain.character import CardInfo, Character, GreetingPick, Speakers
from bot.domain.lore_scan import LoreSource
from bot.domain.lorebook import Lorebook
from bot.domain.templates import check_template as parse_check
from bot.domain.templates import template_names
from bot.domain.variants import DEFAULT_VARIANT

#: Variables a system prompt or greeting may use, e.g. "You are talking to {user_name}".
PROMPT_VARIABLES = frozenset(
    {"user_name", "channel", "date", "time", "weekday", "persona_name", "bot_name", "server"}
)

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


#: Longest text a prompt field may hold (characters): far above any useful prompt, far below harm.
MAX_PROMPT_CHARS = 32_000


def template_fields(template: str) -> set[str]:
    """Names used as `{name}` in a template (raises TemplateError, a ValueError, if it is invalid)."""
    return template_names(template)


def check_template(template: str) -> str:
    """The template, if it only uses bare `{name}` placeholders of PROMPT_VARIABLES (see
    bot.domain.templates); else TemplateError (a ValueError with the offending character's offset)."""
    parse_check(template, PROMPT_VARIABLES)
    return template


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Example(_Strict):
    """One few-shot exchange shown to the model before the conversation."""

    user: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    assistant: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class GenerationParams(_Strict):
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    stop: tuple[str, ...] = Field(default=(), max_length=8)

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stops: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class ModelChoice(_Strict):
    """Which backend serves this persona; unset fields fall back to the global settings."""

    backend: Literal["local", "openai", "scripted"] | None = None
    name: str | None = Field(default=None, description="Remote model name (openai backend).")
    base_url: str | None = Field(default=None, description="Remote server URL (openai backend).")


class MemoryLimits(_Strict):
    """Per-persona overrides of the global memory settings."""

    max_turns: int | None = Field(default=None, ge=0, le=500)
    max_tokens: int | None = Field(default=None, ge=0, le=32768)
    ttl_seconds: int | None = Field(default=None, ge=0)


class Identity(_Strict):
    """How the persona appears in Discord when posting through a webhook."""

    name: str | None = Field(default=None, min_length=1, max_length=80)
    avatar_url: str | None = None
    avatar_path: str | None = None  # a local image, uploaded as a webhook's avatar (resolved by the loader)


class Variant(_Strict):
    """An A/B alternative of a persona: overrides some of its hard prompt, generation or adapter.

    A conversation sticks to one variant for `Persona.variant_period_hours` (see
    bot.domain.variants); `weight` is its share of the traffic (0: switched off).
    """

    id: str = Field(pattern=ID_PATTERN)
    weight: float = Field(default=1.0, ge=0.0)
    system_prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    #: Only the generation fields to change, e.g. {"temperature": 0.2}; checked against the persona's.
    generation: dict[str, Any] = Field(default_factory=dict)
    adapter: str | None = Field(default=None, min_length=1)
    #: Replaces the persona's few-shot examples (an empty list: none); unset keeps the persona's.
    examples: tuple[Example, ...] | None = None

    @field_validator("system_prompt")
    @classmethod
    def _known_variables(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


class Persona(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=80)
    description: str = Field(default="", max_length=2000)
    version: str = Field(default="1", min_length=1, max_length=32)
    system_prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    greeting: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    examples: tuple[Example, ...] = Field(default=(), max_length=100)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    model: ModelChoice = Field(default_factory=ModelChoice)
    adapter: str | None = Field(default=None, description="Path of a PEFT adapter directory.")
    memory: MemoryLimits = Field(default_factory=MemoryLimits)
    identity: Identity | None = None
    variants: tuple[Variant, ...] = Field(default=(), max_length=20)
    variant_period_hours: float = Field(default=24.0, ge=0.0, description="0: a conversation never switches.")
    # Character cards (issue #13): bot.domain.character, bot.domain.lorebook, bot.cards.
    nickname: str | None = Field(default=None, min_length=1, max_length=80, description="{persona_name} when set.")
    character: Character = Field(default_factory=Character)
    post_history_instructions: str | None = Field(default=None, description="Sent after the conversation.")
    alternate_greetings: tuple[str, ...] = Field(default=(), max_length=100)
    group_greetings: tuple[str, ...] = Field(default=(), max_length=100)
    greeting_pick: GreetingPick = "first"
    greeting_in_prompt: bool = Field(default=False, description="The opening greeting is the model's first turn.")
    speakers: Speakers = Field(default_factory=Speakers)
    lorebook: Lorebook | None = None
    lorebooks: tuple[str, ...] = Field(default=(), max_length=32, description="Shared lorebooks by name.")
    card: CardInfo | None = None
    _shared_lorebooks: tuple[tuple[str, Lorebook], ...] = PrivateAttr(default=())

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # YAML reads `version: 1.2` as a float; versions are labels, keep them as text.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("system_prompt", "greeting")
    @classmethod
    def _known_variables(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    @field_validator("post_history_instructions")
    @classmethod
    def _known_variables_phi(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    @field_validator("alternate_greetings", "group_greetings")
    @classmethod
    def _known_variables_greetings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            check_template(value)
        return values

    @field_validator("lorebooks")
    @classmethod
    def _lorebook_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not re.fullmatch(ID_PATTERN, name):
                raise ValueError(f"lorebook name {name!r}: lowercase letters, digits, - and _ (its file name)")
        if len(set(names)) != len(names):
            raise ValueError("a lorebook is listed twice")
        return names

    @field_validator("adapter")
    @classmethod
    def _adapter_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("adapter must be a directory path or left out")
        return value

    @model_validator(mode="after")
    def _valid_variants(self) -> Persona:
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant ids must be unique")
        if self.variants and not any(v.weight > 0 for v in self.variants):
            raise ValueError("at least one variant needs a weight above 0")
        for variant in self.variants:
            self._merged_generation(variant)
        if isinstance(self.greeting_pick, int):
            count = len(self.alternate_greetings) + len(self.group_greetings)
            if not 0 <= self.greeting_pick <= count:
                raise ValueError(f"greeting_pick {self.greeting_pick}: 0 is the greeting, 1-{count} the alternates")
        return self

    def with_lorebooks(self, shared: tuple[tuple[str, Lorebook], ...]) -> Persona:
        """This persona with its `lorebooks` resolved (bot.personas.lorebooks loads them by name)."""
        copy = self.model_copy()
        copy._shared_lorebooks = shared
        return copy

    @property
    def lore_sources(self) -> list[LoreSource]:
        """The books scanned for this persona: its own first, then the shared ones in listed order."""
        own = [LoreSource("persona", self.lorebook)] if self.lorebook is not None else []
        return own + [LoreSource(name, book) for name, book in self._shared_lorebooks]

    def _merged_generation(self, variant: Variant) -> GenerationParams:
        try:
            return GenerationParams.model_validate({**self.generation.model_dump(), **variant.generation})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"variant {variant.id!r}: generation.{where}: {first['msg']}") from None

    def with_variant(self, variant_id: str) -> Persona:
        """This persona as `variant_id` serves it. "default" is the persona itself when it has no
        variant of that name. Raises KeyError for an unknown variant."""
        variant = next((v for v in self.variants if v.id == variant_id), None)
        if variant is None:
            if variant_id == DEFAULT_VARIANT:
                return self
            raise KeyError(f"persona {self.id!r} has no variant {variant_id!r}")
        return self.model_copy(
            update={
                "system_prompt": variant.system_prompt or self.system_prompt,
                "generation": self._merged_generation(variant),
                "adapter": variant.adapter or self.adapter,
                "examples": self.examples if variant.examples is None else variant.examples,
            }
        )
