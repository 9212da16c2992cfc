"""One generation request as both sides see it.

The event loop submits a `Request` and reads a `RowStream` (text pieces, then one `Finished`). The
worker thread owns the request from admission on and talks back only through its `Sink`
(`call_soon_threadsafe`), so no asyncio object is touched from the worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.domain.persona import GenerationParams
from bot.errors import ModelError

FinishReason = Literal["eos", "length", "stop", "cancelled"]


@dataclass(frozen=True)
class SoftPrompt:
    """A soft prompt: [virtual_tokens, hidden] embeddings put before the row's token embeddings.
    `name` identifies it in the prompt cache (a retrained soft prompt needs a new name)."""

    name: str
    embeddings: Any

    @property
    def virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass(frozen=True, slots=True)
class Finished:
    """The last item of a RowStream."""

    prompt_tokens: int  # positions the model read: prompt tokens + soft prompt virtual tokens
    completion_tokens: int  # generated tokens, including a final end-of-turn token
    finish_reason: FinishReason
    cached_tokens: int  # prompt tokens whose KV came from the prompt cache
    queued_s: float  # submit -> admitted into the batch
    first_token_s: float | None  # submit -> first token chosen
    token_ids: tuple[int, ...] = ()  # the generated tokens


_END = object()


class Sink:
    """Thread -> event loop delivery for one row."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    def put(self, item: object) -> bool:
        """False when the consumer's loop is gone (then the row should be dropped)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # loop closed
            return False
        return True


@dataclass(eq=False)
class Request:
    input_ids: list[int]
    params: GenerationParams
    max_new_tokens: int
    sink: Sink
    lora: str | None = None
    soft_prompt: SoftPrompt | None = None
    prefix_len: int = 0
    cache_tag: str = ""
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def virtual_tokens(self) -> int:
        return 0 if self.soft_prompt is None else self.soft_prompt.virtual_tokens

    @property
    def prompt_positions(self) -> int:
        return len(self.input_ids) + self.virtual_tokens

    def fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, ModelError) else ModelError(f"local generation failed: {exc}")
        if error is not exc:
            error.__cause__ = exc
        self.sink.put(error)


class RowStream:
    """Async iterator over one row's text pieces, then its `Finished`. Closing it (aclose, leaving
    `async with`, or dropping it) cancels the row: the worker frees its batch slot at the next step."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._done = False

    def __aiter__(self) -> RowStream:
        return self

    async def __anext__(self) -> str | Finished:
        if self._done:
            raise StopAsyncIteration
        item = await self.request.sink.queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        assert isinstance(item, str | Finished)
        return item

    def cancel(self) -> None:
        self._done = True
        self.request.cancelled.set()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> RowStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        # A consumer that dropped the stream without closing it must not hold a batch slot.
        self.request.cancelled.set()


def end_of_stream() -> object:
    return _END
