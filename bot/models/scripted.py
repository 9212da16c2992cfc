"""A deterministic chat model for tests and demos that are not about generation.

Replies come from a script: a list of replies used in turn (cycling), or by default a reply that
quotes the persona's name and the user's last message, so tests can check what reached the model.
Streams word by word. `fail_on` makes it raise for messages containing a marker (failure tests).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from bot.models.tokens import approx_token_count

__all__ = ["ScriptedChatModel", "approx_token_count"]

DEFAULT_TEMPLATE = "[{persona}] You said: {last}"


def _word_count(text: str) -> int:
    return len(text.split())


class ScriptedChatModel(BaseChatModel):
    persona_name: str = "bot"
    replies: list[str] = Field(default_factory=list)
    template: str = DEFAULT_TEMPLATE
    fail_on: str | None = None
    delay_s: float = 0.0
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _reply_for(self, messages: list[BaseMessage]) -> str:
        # The user's last message: a persona's post-history instructions may follow it (a system message).
        users = [m for m in messages if m.type == "human"]
        last = str((users or messages)[-1].content) if messages else ""
        if self.fail_on and self.fail_on in last:
            raise RuntimeError(f"scripted failure on {self.fail_on!r}")
        index = self.calls
        self.calls += 1
        if self.replies:
            return self.replies[index % len(self.replies)]
        return self.template.format(persona=self.persona_name, last=last, n=index + 1)

    @staticmethod
    def _pieces(text: str) -> list[str]:
        return re.findall(r"\S+\s*|\s+", text) or [text]

    @staticmethod
    def _usage(messages: list[BaseMessage], reply: str) -> UsageMetadata:
        prompt = sum(_word_count(str(m.content)) for m in messages)
        out = _word_count(reply)
        return UsageMetadata(input_tokens=prompt, output_tokens=out, total_tokens=prompt + out)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply_for(messages)
        message = AIMessage(content=reply, usage_metadata=self._usage(messages, reply))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply_for(messages)
        for piece in self._pieces(reply):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=self._usage(messages, reply)))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        reply = self._reply_for(messages)
        for piece in self._pieces(reply):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=self._usage(messages, reply)))


