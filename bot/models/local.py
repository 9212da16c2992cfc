"""The local backend: a transformers model on the CPU, behind LangChain's BaseChatModel.

`LocalRuntime` owns the one loaded model (shared by every persona). Generation runs in a worker
thread so the event loop stays free; tokens stream back through an asyncio queue. A cancelled
stream (the consumer stopped reading) stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from bot.domain.persona import GenerationParams
from bot.domain.stops import StopScanner
from bot.models.local_loader import LoadedModel

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]


@dataclass(frozen=True, slots=True)
class GenerationResult:
    prompt_tokens: int
    completion_tokens: int


_END = object()


class LocalRuntime:
    """The shared local model plus a one-thread generation worker."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")

    @property
    def name(self) -> str:
        return self.loaded.name

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]]) -> Any:
        encoded = self.loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return encoded["input_ids"]

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "repetition_penalty": params.repetition_penalty,
            "pad_token_id": self.loaded.tokenizer.pad_token_id,
        }
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        return kwargs

    def _run_generate(self, input_ids: Any, params: GenerationParams, streamer: Any, cancel: threading.Event) -> int:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel.is_set()

        with torch.inference_mode():
            output = self.loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Cancelled()]),
                **self._generate_kwargs(params),
            )
        return int(output.shape[1] - input_ids.shape[1])

    async def stream(
        self, messages: list[dict[str, str]], params: GenerationParams
    ) -> AsyncIterator[str | GenerationResult]:
        """Yield text pieces as they are decoded, then one GenerationResult."""
        from transformers import TextStreamer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        class QueueStreamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)

        input_ids = self.encode_chat(messages)
        streamer = QueueStreamer(self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def work() -> int:
            try:
                return self._run_generate(input_ids, params, streamer, cancel)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        future = loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _END:
                yield str(item)
            completion = await future
        finally:
            cancel.set()
        yield GenerationResult(prompt_tokens=int(input_ids.shape[1]), completion_tokens=completion)

    def generate_blocking(self, messages: list[dict[str, str]], params: GenerationParams) -> tuple[str, GenerationResult]:
        input_ids = self.encode_chat(messages)
        import torch

        with torch.inference_mode():
            output = self.loaded.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **self._generate_kwargs(params)
            )
        new = output[0, input_ids.shape[1] :]
        text = self.loaded.tokenizer.decode(new, skip_special_tokens=True)
        return text, GenerationResult(int(input_ids.shape[1]), int(new.shape[0]))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


class LocalChatModel(BaseChatModel):
    """A persona's view of the shared LocalRuntime: its generation parameters (and stop strings)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runtime: LocalRuntime
    params: GenerationParams = GenerationParams()

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
        text, result = self.runtime.generate_blocking(to_chat_dicts(messages), self.params)
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

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        scanner = StopScanner(self._stops(stop))
        stream = self.runtime.stream(to_chat_dicts(messages), self.params)
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
