"""The character-card parts of a persona: character sheet, speaker format, greetings, card metadata.

Kept apart from bot.domain.persona so that file stays about the core persona; Persona has a field
of each type here. A persona imported from a Character Card V2/V3 fills them (bot.cards maps every
card field); a hand-written persona may use them too.
"""

from __future__ import annotations

import hashlib
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

#: What a card's empty system prompt means (SillyTavern's default main prompt, in this bot's variables).
DEFAULT_CARD_SYSTEM_PROMPT = (
    "Write {persona_name}'s next reply in a fictional chat between {persona_name} and {user_name}."
)

#: first | random | sticky, or a greeting's index (a strict int: YAML's `true` is not greeting 1).
GreetingPick = Literal["first", "random", "sticky"] | Annotated[int, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Character(_Strict):
    """A card's character definition. Non-empty parts follow the system prompt in the system message:

        {system_prompt}
        {description}
        {persona_name}'s personality: {personality}
        Scenario: {scenario}

    Templates, with the same variables as the system prompt.
    """

    description: str = Field(default="", max_length=200_000)
    personality: str = Field(default="", max_length=200_000)
    scenario: str = Field(default="", max_length=200_000)

    @field_validator("description", "personality", "scenario")
    @classmethod
    def _known_variables(cls, value: str) -> str:
        from bot.domain.persona import check_template

        return check_template(value)


class Speakers(_Strict):
    """How user turns name their speaker, so the model knows who said what in a shared channel.

    `show`: auto = only once the conversation has more than one user; always; never.
    `format` applies to user turns: {name} is the speaker's cleaned display name, {text} the message.
    """

    show: Literal["auto", "always", "never"] = "auto"
    format: str = Field(default="{name}: {text}", min_length=1, max_length=200)
    max_name_length: int = Field(default=32, ge=1, le=100)

    @field_validator("format")
    @classmethod
    def _name_and_text(cls, value: str) -> str:
        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"broken braces in speaker format: {exc} (write {{{{ and }}}} for braces)") from exc
        if "text" not in {f for f, _, _ in parts}:
            raise ValueError("the speaker format must contain {text}")
        if any(f not in ("name", "text") or spec or conv for f, spec, conv in parts):
            raise ValueError("the speaker format may only use {name} and {text}, without format specs")
        return value


class CardAsset(_Strict):
    """A Character Card V3 asset. `uri` is a local path (relative to the persona file) for files the
    import extracted, else the card's own URI (https:, data: is never kept, ccdefault:)."""

    type: str = Field(max_length=100)
    uri: str = Field(max_length=2048)
    name: str = Field(default="", max_length=200)
    ext: str = Field(default="", max_length=20)


class CardInfo(_Strict):
    """Card fields that do not shape prompts, kept so an export gives them back unchanged."""

    spec: str = Field(default="chara_card_v2", max_length=32)
    creator: str = Field(default="", max_length=200_000)
    #: The card's creator notes when they are longer than the persona's `description` holds.
    creator_notes: str | None = Field(default=None, max_length=200_000)
    tags: tuple[str, ...] = Field(default=(), max_length=1000)
    source: tuple[str, ...] = Field(default=(), max_length=1000)
    creation_date: int | None = None
    modification_date: int | None = None
    creator_notes_multilingual: dict[str, str] = Field(default_factory=dict)
    assets: tuple[CardAsset, ...] = Field(default=(), max_length=1000)
    #: The card's `extensions`, verbatim (the specs forbid dropping unknown keys).
    extensions: dict[str, Any] = Field(default_factory=dict)


def greeting_options(greeting: str | None, alternates: tuple[str, ...], group: tuple[str, ...] = ()) -> dict[int, str]:
    """Greetings by card index: 0 is `greeting` (a card's first_mes), 1.. the alternates, then the
    group-only greetings (pass them for conversations with several users)."""
    options = {0: greeting} if greeting else {}
    for n, text in enumerate((*alternates, *group), start=1):
        options[n] = text
    return options


def choose_greeting(
    options: dict[int, str], pick: GreetingPick, persona_id: str, conversation_id: str, draw: float | None = None
) -> int | None:
    """Which greeting opens a conversation. first: the first; sticky: one per conversation, the same
    in every process (a hash); random: a new one each time (`draw` in [0, 1), None: unknown until
    shown); a number: that greeting (the first when there is no such greeting)."""
    if not options:
        return None
    indexes = sorted(options)
    if pick == "sticky":
        digest = hashlib.sha256(f"{persona_id}\x00{conversation_id}".encode()).digest()
        return indexes[int.from_bytes(digest[:8], "big") % len(indexes)]
    if pick == "random":
        return None if draw is None else indexes[min(int(draw * len(indexes)), len(indexes) - 1)]
    if isinstance(pick, int) and pick in options:
        return pick
    return indexes[0]
