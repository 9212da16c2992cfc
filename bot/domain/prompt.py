"""Prompt assembly: persona hard prompt + examples + memory window + new message, within a budget.

Pure functions: token counting is passed in, so this knows nothing of tokenizers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.domain.messages import ChatMessage, StoredTurn
from bot.domain.persona import Persona
from bot.domain.templates import render_template
from bot.errors import PromptTooLong

#: Per-message overhead of chat templates (role markers), in tokens.
MESSAGE_OVERHEAD = 4


@functools.lru_cache(maxsize=2)
def _clock(minute: int) -> tuple[str, str, str]:
    """Local (date, time, weekday) during one epoch minute. They only change from one minute to the
    next (UTC offsets change on minute boundaries), so each message need not read the clock and the
    time zone and format three times."""
    return _formatted(datetime.fromtimestamp(minute * 60).astimezone())


def _formatted(now: datetime) -> tuple[str, str, str]:
    return now.strftime("%Y-%m-%d"), now.strftime("%H:%M"), now.strftime("%A")


@dataclass(frozen=True, slots=True)
class PromptContext:
    user_name: str
    channel: str = "direct messages"
    server: str = ""
    bot_name: str = ""
    now: datetime | None = None

    def variables(self, persona: Persona) -> dict[str, str]:
        date, clock, weekday = _clock(int(time.time() // 60)) if self.now is None else _formatted(self.now)
        return {
            "user_name": self.user_name,
            "channel": self.channel,
            "server": self.server,
            "bot_name": self.bot_name or persona.name,
            "persona_name": persona.name,
            "date": date,
            "time": clock,
            "weekday": weekday,
        }


def render(template: str, persona: Persona, context: PromptContext) -> str:
    """The template with the context's variables filled in. Never raises (bot.domain.templates):
    templates are checked when the persona loads, and anything else renders as written."""
    return render_template(template, context.variables(persona))


def example_messages(persona: Persona) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for ex in persona.examples:
        out += [ChatMessage("user", ex.user), ChatMessage("assistant", ex.assistant)]
    return out


def window_history(
    history: Sequence[StoredTurn], *, max_turns: int, max_tokens: int, count: Callable[[str], int]
) -> list[ChatMessage]:
    """The newest messages that fit both the turn limit and the token budget, oldest first.

    A window never starts with an assistant message cut off from the user message it answered.
    """
    return _window(history, max_turns=max_turns, max_tokens=max_tokens, count=count)[0]


def _window(
    history: Sequence[StoredTurn], *, max_turns: int, max_tokens: int, count: Callable[[str], int]
) -> tuple[list[ChatMessage], int]:
    """window_history, plus the window's cost, so assemble need not count these messages again."""
    kept: list[tuple[ChatMessage, int]] = []
    used = 0
    for turn in reversed(history[-2 * max_turns :] if max_turns else []):
        cost = count(turn.content) + MESSAGE_OVERHEAD
        if used + cost > max_tokens:
            break
        kept.append((turn.as_message(), cost))
        used += cost
    kept.reverse()
    start = 0
    while start < len(kept) and kept[start][0].role == "assistant":
        used -= kept[start][1]
        start += 1
    return [message for message, _ in kept[start:]], used


@dataclass(frozen=True, slots=True)
class AssembledPrompt:
    messages: list[ChatMessage]
    system_prompt: str
    prompt_tokens: int
    history_messages: int
    examples_included: bool


def assemble(
    persona: Persona,
    system_prompt: str,
    history: Sequence[StoredTurn],
    user_text: str,
    *,
    budget: int,
    max_turns: int,
    max_history_tokens: int,
    count: Callable[[str], int],
) -> AssembledPrompt:
    """Build the message list for one turn.

    Priority when the budget is tight: system prompt and new message (required), then the few-shot
    examples (they carry the persona's voice), then as much recent history as fits.
    """

    # Each message is counted once (a tokenizer call can cost more than the rest of assembly);
    # prompt_tokens is the sum of the parts' costs, the same as counting the final list again.
    def cost(messages: Sequence[ChatMessage]) -> int:
        return sum(count(m.content) + MESSAGE_OVERHEAD for m in messages)

    system = ChatMessage("system", system_prompt)
    new = ChatMessage("user", user_text)
    required = cost([system, new])
    if required > budget:
        raise PromptTooLong(required, budget)
    examples = example_messages(persona)
    examples_cost = cost(examples)
    include_examples = required + examples_cost <= budget
    remaining = budget - required - (examples_cost if include_examples else 0)
    window, window_cost = _window(
        history, max_turns=max_turns, max_tokens=min(max_history_tokens, remaining), count=count
    )
    messages = [system, *(examples if include_examples else []), *window, new]
    return AssembledPrompt(
        messages=messages,
        system_prompt=system_prompt,
        prompt_tokens=required + (examples_cost if include_examples else 0) + window_cost,
        history_messages=len(window),
        examples_included=include_examples,
    )


def build_prompt(
    persona: Persona,
    history: Sequence[StoredTurn],
    user_text: str,
    context: PromptContext,
    *,
    context_window: int,
    count: Callable[[str], int],
    max_turns: int,
    max_history_tokens: int,
) -> AssembledPrompt:
    """The one prompt recipe: what production (ChatEngine), `eval` and `refine` send to a model.

    The persona's system prompt rendered for `context`, its examples, as much of `history` as fits,
    and the new message, within the context window less the reply's room (`max_new_tokens`).
    Everything that changes what a model reads for a turn belongs here, so an offline score
    measures exactly the prompt users get.
    """
    return assemble(
        persona,
        render(persona.system_prompt, persona, context),
        history,
        user_text,
        budget=context_window - persona.generation.max_new_tokens,
        max_turns=max_turns,
        max_history_tokens=max_history_tokens,
        count=count,
    )
