"""Prompt assembly: persona hard prompt + lorebook + examples + memory window + new message, within a budget.

Pure functions: token counting is passed in, so this knows nothing of tokenizers.

The order of a prompt (every part but the system message and the new message is optional):

    system      [lore: before_system] system prompt [lore: before_character] character [lore: after_character]
    examples    few-shot user/assistant pairs
    lore        before_history entries (their role)
    greeting    the opening greeting, while the window reaches the start of the conversation
    history     remembered turns; user turns named by the speaker format in shared conversations
    new         the new user message                  (at_depth lore sits N messages from this end)
    post-history instructions (system)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from bot.domain.character import greeting_options
from bot.domain.lore_scan import FiredEntry, activate
from bot.domain.messages import DEFAULT_SPEAKER_NAME, ChatMessage, StoredTurn, clean_name
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
            "persona_name": persona.nickname or persona.name,
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


def character_text(persona: Persona, context: PromptContext) -> str:
    """The persona's character sheet as it follows the system prompt ("" when it has none)."""
    sheet = persona.character
    if not (sheet.description or sheet.personality or sheet.scenario):
        return ""
    variables = context.variables(persona)
    parts = []
    if sheet.description.strip():
        parts.append(sheet.description.format_map(variables).strip())
    if sheet.personality.strip():
        parts.append(f"{variables['persona_name']}'s personality: {sheet.personality.format_map(variables).strip()}")
    if sheet.scenario.strip():
        parts.append(f"Scenario: {sheet.scenario.format_map(variables).strip()}")
    return "\n".join(parts)


def window_history(
    history: Sequence[StoredTurn], *, max_turns: int, max_tokens: int, count: Callable[[str], int]
) -> list[ChatMessage]:
    """The newest messages that fit both the turn limit and the token budget, oldest first.

    A window never starts with an assistant message cut off from the user message it answered.
    """
    return _window([t.as_message() for t in history], max_turns=max_turns, max_tokens=max_tokens, count=count)[0]


def _window(
    history: Sequence[ChatMessage], *, max_turns: int, max_tokens: int, count: Callable[[str], int]
) -> tuple[list[ChatMessage], int]:
    """window_history, plus the window's cost, so assemble need not count these messages again."""
    kept: list[tuple[ChatMessage, int]] = []
    used = 0
    for message in reversed(history[-2 * max_turns :] if max_turns else []):
        cost = count(message.content) + MESSAGE_OVERHEAD
        if used + cost > max_tokens:
            break
        kept.append((message, cost))
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
    #: The persona's own system text (system prompt + character), without lorebook entries: what
    #: `system_prompt_hash` identifies in reply records.
    system_prompt: str
    prompt_tokens: int
    history_messages: int
    examples_included: bool
    #: Lorebook entries in the prompt ("book#entry": "persona" is the persona's own book), in prompt order.
    lore: tuple[str, ...] = ()
    #: Whether user turns carry their speaker's name (a conversation with several users).
    speakers_named: bool = False


#: Chooses the lorebook entries for a turn, given the tokens they may take.
LoreSelector = Callable[[int], list[FiredEntry]]


def _cost(messages: Sequence[ChatMessage], count: Callable[[str], int]) -> int:
    return sum(count(m.content) + MESSAGE_OVERHEAD for m in messages)


def _system_text(system_prompt: str, character: str, lore: Sequence[FiredEntry]) -> str:
    by_position: dict[str, list[str]] = {}
    for fired in lore:
        by_position.setdefault(fired.entry.position, []).append(fired.content)
    pieces = [*by_position.get("before_system", []), system_prompt, *by_position.get("before_character", []),
              character, *by_position.get("after_character", [])]
    return "\n".join(p for p in pieces if p)


def _lore_messages(lore: Sequence[FiredEntry]) -> list[tuple[ChatMessage, int | None]]:
    """Lore outside the system message: one message per run of entries with the same place and role,
    with its depth (None: before the history)."""
    out: list[tuple[ChatMessage, int | None]] = []
    placed = [f for f in lore if f.entry.position in ("before_history", "at_depth")]
    def where(f: FiredEntry) -> tuple[int | None, str]:
        return (f.entry.depth if f.entry.position == "at_depth" else None), f.entry.role
    for (depth, role), run in groupby(sorted(placed, key=lambda f: (where(f)[0] is not None, f.place)), key=where):
        out.append((ChatMessage(role, "\n".join(f.content for f in run)), depth))  # type: ignore[arg-type]
    return out


def assemble(
    persona: Persona,
    system_prompt: str,
    history: Sequence[StoredTurn | ChatMessage],
    user_text: str,
    *,
    budget: int,
    max_turns: int,
    max_history_tokens: int,
    count: Callable[[str], int],
    character: str = "",
    post_history: str = "",
    lore: LoreSelector | None = None,
    opening: str = "",
) -> AssembledPrompt:
    """Build the message list for one turn from rendered parts (build_prompt renders them).

    Priority when the budget is tight: system prompt, character, new message and post-history
    instructions (required); then lorebook entries (each book within its own budget); then the
    few-shot examples (they carry the persona's voice); then as much recent history as fits; then the
    opening greeting (only when the whole history fits: it opened the conversation).
    """
    turns = [t if isinstance(t, ChatMessage) else t.as_message() for t in history]
    base_system = "\n".join(p for p in (system_prompt, character) if p)
    new = ChatMessage("user", user_text)
    tail = [ChatMessage("system", post_history)] if post_history else []
    required = _cost([ChatMessage("system", base_system), new, *tail], count)
    if required > budget:
        raise PromptTooLong(required, budget)
    fired = lore(budget - required) if lore is not None else []
    lore_cost = sum(f.cost for f in fired)
    fired.sort(key=lambda f: f.place)
    system = ChatMessage("system", _system_text(system_prompt, character, fired) if fired else base_system)
    examples = example_messages(persona)
    examples_cost = _cost(examples, count)
    include_examples = required + lore_cost + examples_cost <= budget
    remaining = budget - required - lore_cost - (examples_cost if include_examples else 0)
    window, window_cost = _window(
        turns, max_turns=max_turns, max_tokens=min(max_history_tokens, remaining), count=count
    )
    conversation = [*window, new]
    opening_cost = _cost([ChatMessage("assistant", opening)], count) if opening else 0
    if opening and len(window) == len(turns) and len(turns) < 2 * max_turns and window_cost + opening_cost <= min(
        max_history_tokens, remaining
    ):
        conversation.insert(0, ChatMessage("assistant", opening))
        window_cost += opening_cost
    before_history: list[ChatMessage] = []
    exact = count(base_system) + MESSAGE_OVERHEAD
    if fired:
        placed = _lore_messages(fired)
        for message, depth in reversed(placed):
            if depth is None:
                before_history.insert(0, message)
            else:
                conversation.insert(max(0, len(conversation) - depth), message)
        exact = _cost([system, *(m for m, _ in placed)], count)
    messages = [system, *(examples if include_examples else []), *before_history, *conversation, *tail]
    return AssembledPrompt(
        messages=messages,
        system_prompt=base_system,
        prompt_tokens=exact + _cost([new, *tail], count) + (examples_cost if include_examples else 0) + window_cost,
        history_messages=len(window),
        examples_included=include_examples,
        lore=tuple(f.ref for f in fired),
    )


def _speaker_turns(
    persona: Persona, history: Sequence[StoredTurn], user_text: str, speaker_id: str, user_name: str
) -> tuple[list[ChatMessage], str, bool]:
    """History and new message as the model reads them: user turns named by the persona's speaker
    format once the conversation has several users (or always/never, as configured)."""
    show = persona.speakers.show
    many = show == "always" or (
        show == "auto" and len({t.user_id for t in history if t.role == "user" and t.user_id} | {speaker_id} - {""}) > 1
    )
    if not many:
        return [t.as_message() for t in history], user_text, False
    form, limit = persona.speakers.format, persona.speakers.max_name_length

    def named(name: str, text: str) -> str:
        return form.format(name=name, text=text)

    messages = []
    for turn in history:
        if turn.role != "user":
            messages.append(turn.as_message())
            continue
        if speaker_id and turn.user_id == speaker_id:
            name = user_name  # one name per person: the current one, already cleaned
        else:
            name = clean_name(turn.speaker, limit) if turn.speaker else DEFAULT_SPEAKER_NAME
        messages.append(ChatMessage("user", named(name, turn.content)))
    return messages, named(user_name, user_text), True


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
    speaker_id: str = "",
    greeting: int | None = None,
) -> AssembledPrompt:
    """The one prompt recipe: what production (ChatEngine), `eval` and `refine` send to a model.

    The persona's system prompt and character rendered for `context` (its `user_name` is the current
    speaker, cleaned: no prompt injection through a display name), the lorebook entries the recent
    conversation fires, its examples, as much of `history` as fits (user turns named by speaker when
    several people talk: `speaker_id` is the current speaker's), the new message and the post-history
    instructions, within the context window less the reply's room (`max_new_tokens`). `greeting` is
    the card index of the greeting that opened this conversation (for `greeting_in_prompt` and
    lorebook entries bound to a greeting). Everything that changes what a model reads for a turn
    belongs here, so an offline score measures exactly the prompt users get.
    """
    name = clean_name(context.user_name, persona.speakers.max_name_length)
    if name != context.user_name:
        context = dataclasses.replace(context, user_name=name)
    turns, new_text, named = _speaker_turns(persona, history, user_text, speaker_id, context.user_name)
    budget = context_window - persona.generation.max_new_tokens
    selector: LoreSelector | None = None
    sources = persona.lore_sources if persona.lorebook is not None or persona.lorebooks else []
    if sources:
        variables = context.variables(persona)

        def selector(room: int) -> list[FiredEntry]:
            return activate(
                sources,
                [*(m.content for m in turns), new_text],
                render=lambda template: template.format_map(variables),
                cost=lambda text: count(text) + MESSAGE_OVERHEAD,
                budget=room,
                book_budget=max(1, budget // 4),
                replies=sum(1 for t in history if t.role == "assistant"),
                greeting=greeting,
            )

    opening = ""
    if persona.greeting_in_prompt and greeting is not None:
        options = greeting_options(persona.greeting, persona.alternate_greetings, persona.group_greetings)
        if greeting in options:
            opening = render(options[greeting], persona, context)
    prompt = assemble(
        persona,
        render(persona.system_prompt, persona, context),
        turns,
        new_text,
        budget=budget,
        max_turns=max_turns,
        max_history_tokens=max_history_tokens,
        count=count,
        character=character_text(persona, context),
        post_history=render(persona.post_history_instructions, persona, context)
        if persona.post_history_instructions
        else "",
        lore=selector,
        opening=opening,
    )
    return dataclasses.replace(prompt, speakers_named=named) if named else prompt
