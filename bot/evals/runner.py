"""Run prompt test cases against a persona (variant) and check the replies.

Replies come from a `Responder`. `ModelResponder` is the real one: it binds the persona's model
through the ModelProvider and builds the prompt with the same `build_prompt()` recipe the ChatEngine uses,
with the case's conversation as history. It deliberately bypasses ChatEngine.reply(): evals must
not write conversation memory or reply records, or they would pollute the feedback report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from langchain_core.language_models.chat_models import BaseChatModel

from bot.domain.messages import StoredTurn
from bot.domain.persona import Persona
from bot.domain.prompt import PromptContext, build_prompt
from bot.engine import to_langchain
from bot.errors import BotError
from bot.evals.assertions import check
from bot.evals.cases import EvalCase
from bot.evals.results import CaseRun, EvalResults
from bot.ports import ModelProvider

Responder = Callable[[Persona, EvalCase], Awaitable[str]]
JudgeFor = Callable[[Persona], BaseChatModel | None]
OnRun = Callable[[CaseRun], None]


@dataclass(frozen=True, slots=True)
class EvalTarget:
    """One persona as it will be tested: `persona` already has the variant's overrides applied."""

    persona: Persona
    variant: str
    cases: tuple[EvalCase, ...]


class ModelResponder:
    """Generate a reply with the persona's real backend, as the engine would (without memory)."""

    def __init__(self, models: ModelProvider, *, bot_name: str = "") -> None:
        self.models = models
        self.bot_name = bot_name

    async def __call__(self, persona: Persona, case: EvalCase) -> str:
        bound = self.models.bind(persona)
        context = PromptContext(user_name=case.user_name, channel=case.channel, bot_name=self.bot_name)
        history = [StoredTurn(m.role, m.content) for m in case.input[:-1]]
        prompt = build_prompt(
            persona,
            history,
            case.input[-1].content,
            context,
            context_window=bound.context_window,
            count=bound.count_tokens,
            max_turns=len(history),  # the case's conversation is the memory: keep all of it
            max_history_tokens=bound.context_window,
        )
        answer = await bound.chat_model.ainvoke(to_langchain(prompt.messages))
        return (answer.content if isinstance(answer.content, str) else str(answer.content)).strip()


def bound_judge(models: ModelProvider, judge_persona: Persona | None = None) -> JudgeFor:
    """Judge with `judge_persona`'s model when given (e.g. a temperature-0 persona), else with
    the model of the persona under test."""

    def judge_for(persona: Persona) -> BaseChatModel:
        return models.bind(judge_persona or persona).chat_model

    return judge_for


async def run_case(
    target: EvalTarget, case: EvalCase, attempt: int, responder: Responder, judge_for: JudgeFor | None
) -> CaseRun:
    persona = target.persona
    started = time.perf_counter()
    try:
        reply = await responder(persona, case)
    except BotError as exc:
        # One failing generation (prompt too long, model error) fails this run, not the whole eval.
        error = f"{type(exc).__name__}: {exc}"
        return CaseRun(persona.id, persona.version, target.variant, case.name, attempt, "", 0.0, error=error)
    latency = time.perf_counter() - started
    judge = judge_for(persona) if judge_for is not None and case.needs_judge else None
    checks = tuple([await check(a, reply, case.input, judge) for a in case.assertions])
    return CaseRun(persona.id, persona.version, target.variant, case.name, attempt, reply, latency, checks)


async def run_evals(
    targets: Sequence[EvalTarget],
    responder: Responder,
    *,
    judge_for: JudgeFor | None = None,
    repeat: int = 1,
    on_run: OnRun | None = None,
    concurrency: int = 1,
) -> EvalResults:
    """Every case of every target, `repeat` times, up to `concurrency` at once (the local backend
    decodes concurrent replies in one batch). Results keep the order target, case, attempt, so
    runs stay comparable whatever the concurrency."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    jobs = [(t, c, a) for t in targets for c in t.cases for a in range(1, repeat + 1)]
    slots = asyncio.Semaphore(concurrency)

    async def one(target: EvalTarget, case: EvalCase, attempt: int) -> CaseRun:
        async with slots:
            run = await run_case(target, case, attempt, responder, judge_for)
        if on_run is not None:
            on_run(run)
        return run

    return EvalResults(list(await asyncio.gather(*(one(*job) for job in jobs))))
