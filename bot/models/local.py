"""The local backend behind LangChain's BaseChatModel: `LocalChatModel`, a persona's view of the
shared `LocalRuntime` (bot.models.runtime: the model, its adapters and the batch scheduler)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from bot.domain.persona import GenerationParams
from bot.domain.stops import StopScanner
from bot.models.runtime import GenerationResult, LocalRuntime

__all__ = ["GenerationResult", "LocalChatModel", "LocalRuntime", "to_chat_dicts"]

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class LocalChatModel(BaseChatModel):
    """A persona's view of the shared LocalRuntime: its generation parameters (and stop strings) and
    its adapter (a PEFT directory path: LoRA or soft prompt), if any."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: LocalRuntime
    params: GenerationParams = GenerationParams()
    adapter: str | None = None
    #: Leading messages that are the persona's hard prompt (system + examples), cached across turns.
    prefix_messages: int = 1
    #: The persona id: its cached prompts are dropped on a persona reload.
    cache_tag: str = ""

    @property
    def _llm_type(self) -> str:
        return "local-transformers"

    def _stops(self, stop: list[str] | None) -> list[str]:
        return [*self.params.stop, *(stop or [])]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, result = self.runtime.generate_blocking(to_chat_dicts(messages), self.params, self.adapter)
        scanner = StopScanner(self._stops(stop))
        text = scanner.feed(text) + scanner.flush()
        message = AIMessage(content=text, usage_metadata=_usage(result))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        result = self._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        yield ChatGenerationChunk(
            message=AIMessageChunk(content=message.content, usage_metadata=getattr(message, "usage_metadata", None))
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # ainvoke (evals, the judge) goes through the batch scheduler too, not the blocking path.
        text, usage = [], None
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            text.append(str(chunk.message.content))
            usage = getattr(chunk.message, "usage_metadata", None) or usage
        message = AIMessage(content="".join(text), usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        scanner = StopScanner(self._stops(stop))
        stream = self.runtime.stream(
            to_chat_dicts(messages),
            self.params,
            self.adapter,
            prefix_messages=self.prefix_messages,
            cache_tag=self.cache_tag,
        )
        try:
            async for item in stream:
                if isinstance(item, GenerationResult):
                    tail = scanner.flush()
                    yield ChatGenerationChunk(message=AIMessageChunk(content=tail, usage_metadata=_usage(item)))
                    return
                text = scanner.feed(item)
                if text:
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if scanner.stopped:
                    return
        finally:
            await stream.aclose()
