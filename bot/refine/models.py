"""The models refine talks to besides the persona's own: the optimiser and the judge.

The optimiser is any OpenAI-compatible server (`BOT_REFINE__OPTIMIZER_BASE_URL`, its own model
name, key and timeout), or the local model when none is configured. The judge is the optimiser
(default) or the model of the persona under test (`BOT_REFINE__JUDGE=persona`), always at
temperature 0 so its verdicts repeat.
"""

from __future__ import annotations

from langchain_core.language_models.chat_models import BaseChatModel

from bot.domain.persona import GenerationParams, ModelChoice, Persona
from bot.ports import ModelProvider
from bot.refine.evaluation import JudgeFor
from bot.settings import RefineSettings

OPTIMIZER_PERSONA = "refine-optimizer"


def _local(provider: ModelProvider, name: str, temperature: float, max_new_tokens: int) -> BaseChatModel:
    persona = Persona(
        id=name, name=name, system_prompt="You are a careful assistant.",
        generation=GenerationParams(temperature=temperature, max_new_tokens=max_new_tokens, repetition_penalty=1.05),
        model=ModelChoice(backend="local"),
    )  # fmt: skip
    return provider.bind(persona).chat_model


def optimizer_model(settings: RefineSettings, provider: ModelProvider, *, temperature: float = 0.7,
                    max_tokens: int = 1024) -> tuple[BaseChatModel, str]:
    """(chat model, label for messages)."""
    if settings.optimizer_base_url is None:
        return _local(provider, OPTIMIZER_PERSONA, temperature, min(max_tokens, 512)), "the local optimiser model"
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        model=settings.optimizer_model, base_url=settings.optimizer_base_url, api_key=settings.optimizer_api_key,
        temperature=temperature, max_completion_tokens=max_tokens, timeout=settings.optimizer_timeout,
        max_retries=1,
    )  # fmt: skip
    return model, f"optimiser {settings.optimizer_model} at {settings.optimizer_base_url}"


def judge_for(settings: RefineSettings, provider: ModelProvider) -> JudgeFor:
    """Which model judges replies of a persona."""
    if settings.judge == "optimizer":
        judge, _ = optimizer_model(settings, provider, temperature=0.0, max_tokens=8)
        return lambda persona: judge

    def own(persona: Persona) -> BaseChatModel:
        greedy = persona.model_copy(update={
            "generation": persona.generation.model_copy(update={"temperature": 0.0, "max_new_tokens": 8}),
            "adapter": None,
        })  # fmt: skip
        return provider.bind(greedy).chat_model

    return own
