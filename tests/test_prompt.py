"""Prompt assembly and memory windowing: pure functions."""

from __future__ import annotations

from datetime import datetime

import pytest

from bot.domain.messages import StoredTurn
from bot.domain.persona import Example, Persona
from bot.domain.prompt import MESSAGE_OVERHEAD, PromptContext, assemble, render, window_history
from bot.errors import PromptTooLong


def words(text: str) -> int:
    return len(text.split())


def persona(**overrides: object) -> Persona:
    data: dict[str, object] = {"id": "p", "name": "Pat", "system_prompt": "You are Pat. Talking to {user_name}."}
    data.update(overrides)
    return Persona.model_validate(data)


def turns(n: int) -> list[StoredTurn]:
    out = []
    for i in range(n):
        out += [StoredTurn("user", f"question {i}"), StoredTurn("assistant", f"answer {i}")]
    return out


def test_render_fills_variables() -> None:
    p = persona(system_prompt="{persona_name} talks to {user_name} in {channel} on {date} ({weekday})")
    ctx = PromptContext(user_name="Sam", channel="#general", now=datetime(2026, 1, 2, 10, 30))
    assert render(p.system_prompt, p, ctx) == "Pat talks to Sam in #general on 2026-01-02 (Friday)"


def test_window_keeps_newest_turns_within_turn_limit() -> None:
    window = window_history(turns(5), max_turns=2, max_tokens=10_000, count=words)
    assert [m.content for m in window] == ["question 3", "answer 3", "question 4", "answer 4"]


def test_window_respects_token_budget_and_never_starts_with_assistant() -> None:
    per_message = 2 + MESSAGE_OVERHEAD
    window = window_history(turns(5), max_turns=5, max_tokens=3 * per_message, count=words)
    # Three messages fit (answer 3, question 4, answer 4) but a leading assistant reply is dropped.
    assert [m.content for m in window] == ["question 4", "answer 4"]


def test_zero_turns_means_no_memory() -> None:
    assert window_history(turns(3), max_turns=0, max_tokens=1000, count=words) == []


def test_assemble_orders_system_examples_history_new() -> None:
    p = persona(examples=[Example(user="hi", assistant="hello")])
    prompt = assemble(p, "SYS", turns(1), "new", budget=1000, max_turns=5, max_history_tokens=1000, count=words)
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "SYS"), ("user", "hi"), ("assistant", "hello"),
        ("user", "question 0"), ("assistant", "answer 0"), ("user", "new"),
    ]
    assert prompt.prompt_tokens == sum(words(m.content) + MESSAGE_OVERHEAD for m in prompt.messages)


def test_tight_budget_drops_history_before_examples() -> None:
    p = persona(examples=[Example(user="hi", assistant="hello")])
    budget = 4 * (1 + MESSAGE_OVERHEAD)  # system + new + the two example messages, nothing more
    prompt = assemble(p, "SYS", turns(3), "new", budget=budget, max_turns=5, max_history_tokens=1000, count=words)
    assert prompt.history_messages == 0
    assert prompt.examples_included


def test_prompt_too_long() -> None:
    with pytest.raises(PromptTooLong) as info:
        assemble(persona(), "a b c d e", [], "x " * 50, budget=20, max_turns=5, max_history_tokens=100, count=words)
    assert info.value.budget == 20
