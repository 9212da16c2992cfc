"""Replaying rated conversations with a persona (or candidate) and scoring the new replies.

`Replayer` generates exactly as production does: `build_prompt` (the one prompt recipe) with the
persona's memory limits, its bound model and generation parameters, but writes no memory and no
reply records. `Scorer` replays items and has a judge compare each new reply with the rated one
(bot.refine.judge), weighted by the number of raters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel

from bot.domain.messages import ChatMessage, StoredTurn
from bot.domain.persona import Persona
from bot.domain.prompt import PromptContext, build_prompt
from bot.domain.stats import weighted_mean_interval
from bot.engine import to_langchain
from bot.ports import ModelProvider
from bot.refine.dataset import ReplayItem
from bot.refine.judge import Preference, item_score, prefer
from bot.settings import MemorySettings

JudgeFor = Callable[[Persona], BaseChatModel]


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Replayer:
    """Generate one reply for (persona, remembered turns, new message), as the engine would."""

    def __init__(self, models: ModelProvider, memory: MemorySettings, *, user_name: str = "friend",
                 bot_name: str = "") -> None:
        self.models = models
        self.memory = memory
        self.user_name = user_name
        self.bot_name = bot_name

    def limits(self, persona: Persona) -> tuple[int, int]:
        p = persona.memory
        return (self.memory.max_turns if p.max_turns is None else p.max_turns,
                self.memory.max_tokens if p.max_tokens is None else p.max_tokens)

    async def reply(self, persona: Persona, history: Sequence[ChatMessage], user_text: str,
                    at: float | None = None) -> Generated:
        bound = self.models.bind(persona)
        max_turns, max_tokens = self.limits(persona)
        turns = [StoredTurn(m.role, m.content, persona_id=persona.id) for m in history if m.role != "system"]
        context = PromptContext(user_name=self.user_name, bot_name=self.bot_name,
                                now=datetime.fromtimestamp(at) if at else None)
        started = time.perf_counter()
        try:
            prompt = build_prompt(persona, turns, user_text, context, context_window=bound.context_window,
                                  count=bound.count_tokens, max_turns=max_turns, max_history_tokens=max_tokens)
            answer = await bound.chat_model.ainvoke(to_langchain(prompt.messages))
        except Exception as exc:  # one failed generation scores as a failure, not a crash
            return Generated("", time.perf_counter() - started, 0, 0, f"{type(exc).__name__}: {exc}")
        text = (answer.content if isinstance(answer.content, str) else str(answer.content)).strip()
        return Generated(text, time.perf_counter() - started, prompt.prompt_tokens, bound.count_tokens(text))


@dataclass(frozen=True, slots=True)
class ItemResult:
    reply_id: str
    score: float
    weight: int
    reply: str
    preference: Preference
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"reply_id": self.reply_id, "score": round(self.score, 4), "weight": self.weight,
                "reply": self.reply, "wins": self.preference.wins, "verdicts": self.preference.verdicts,
                "latency_s": round(self.latency_s, 4), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemResult:
        return cls(d["reply_id"], d["score"], d["weight"], d["reply"], Preference(d["wins"], d["verdicts"]),
                   d["latency_s"], d["prompt_tokens"], d["completion_tokens"], d.get("error"))


@dataclass
class ScoreResult:
    items: list[ItemResult] = field(default_factory=list)

    @property
    def interval(self) -> tuple[float, float, float]:
        if not self.items:
            return 0.0, 0.0, 1.0
        mean, low, high = weighted_mean_interval([i.score for i in self.items], [i.weight for i in self.items])
        return mean, max(0.0, low), min(1.0, high)

    @property
    def mean(self) -> float:
        return self.interval[0]

    def _avg(self, values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    @property
    def errors(self) -> int:
        return sum(1 for i in self.items if i.error)

    def summary(self) -> dict[str, object]:
        ok = [i for i in self.items if not i.error]
        mean, low, high = self.interval
        return {
            "score": round(mean, 4), "ci95": [round(low, 4), round(high, 4)], "items": len(self.items),
            "errors": self.errors,
            "completion_tokens": self._avg([i.completion_tokens for i in ok]),
            "latency_s": self._avg([i.latency_s for i in ok]),
            "prompt_tokens": self._avg([i.prompt_tokens for i in ok]),
            "judge_verdicts": sum(i.preference.verdicts for i in self.items),
        }  # fmt: skip


class Scorer:
    """Replay items with a persona and judge each new reply against the rated one."""

    def __init__(self, replayer: Replayer, judge_for: JudgeFor) -> None:
        self.replayer = replayer
        self.judge_for = judge_for

    async def item(self, persona: Persona, item: ReplayItem) -> ItemResult:
        generated = await self.replayer.reply(persona, item.history, item.user_text, item.created_at)
        if generated.error:
            lost = Preference(0.0, 0)
            return ItemResult(item.reply_id, item_score(lost, item.ups, item.downs), item.weight, "", lost,
                              generated.latency_s, 0, 0, generated.error)
        try:
            preference = await prefer(self.judge_for(persona), item.conversation(), generated.text, item.reply)
        except Exception as exc:  # a broken judge scores a tie and says so, it does not end the run
            preference = Preference(0.5, 0)
            return ItemResult(item.reply_id, item_score(preference, item.ups, item.downs), item.weight,
                              generated.text, preference, generated.latency_s, generated.prompt_tokens,
                              generated.completion_tokens, f"judge failed: {exc}")
        return ItemResult(item.reply_id, item_score(preference, item.ups, item.downs), item.weight, generated.text,
                          preference, generated.latency_s, generated.prompt_tokens, generated.completion_tokens)

    async def score(self, persona: Persona, items: Sequence[ReplayItem]) -> ScoreResult:
        # Sequential: the local backend batches concurrent requests, but the judge shares the model,
        # and a stable order keeps runs comparable.
        return ScoreResult([await self.item(persona, item) for item in items])
