"""One generation request as both sides see it.

The event loop submits a `Request` and reads a `RowStream` (text pieces, then one `Finished`). The
worker thread owns the request from admission on and talks back only through its `Sink`
(`call_soon_threadsafe`), so no asyncio object is touched from the worker thread.

A request ends exactly once (`finish` or `fail`; later calls are ignored), so a supervisor that fails
"every row it held" after a crash cannot double-end a row that already finished. The consumer never
waits without an end: while nothing arrives it asks the scheduler's `WorkerHealth` every
`LIVENESS_POLL_S` whether the worker died or hangs, and then raises ModelError.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bot.domain.persona import GenerationParams
from bot.errors import ModelError

FinishReason = Literal["eos", "length", "stop", "cancelled"]

#: How often a waiting consumer checks that the worker is alive and not stuck in one step.
LIVENESS_POLL_S = 0.5


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
    ended: bool = False  # finish() or fail() happened; the sink takes nothing more

    def emit(self, text: str) -> None:
        """Stream a text piece (a consumer whose loop is gone cancels the row)."""
        if text and not self.ended and not self.sink.put(text):
            self.cancelled.set()

    @property
    def virtual_tokens(self) -> int:
        return 0 if self.soft_prompt is None else self.soft_prompt.virtual_tokens

    @property
    def prompt_positions(self) -> int:
        return len(self.input_ids) + self.virtual_tokens

    def finish(self, result: Finished | None) -> bool:
        """End the stream (with its Finished, or None for a cancelled row); False if it had ended."""
        if self.ended:
            return False
        self.ended = True
        if result is not None:
            self.sink.put(result)
        self.sink.put(_END)
        return True

    def fail(self, exc: BaseException) -> None:
        """End the stream with a ModelError (wrapping `exc` as its cause); no-op if it had ended."""
        if self.ended:
            return
        self.ended = True
        self.sink.put(as_model_error(exc))


def as_model_error(exc: BaseException) -> ModelError:
    if isinstance(exc, ModelError):
        return exc
    error = ModelError(f"local generation failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class RowStream:
    """Async iterator over one row's text pieces, then its `Finished`. Closing it (aclose, leaving
    `async with`, or dropping it) cancels the row: the worker frees its batch slot at the next step.

    `health()` returns why the worker cannot deliver any more (it died, or hangs in one step), or
    None; it is asked whenever nothing arrived for `poll_s`, so a dead worker ends the wait promptly.
    """

    def __init__(self, request: Request, health: Callable[[], str | None] | None = None,
                 poll_s: float = LIVENESS_POLL_S) -> None:
        self.request = request
        self._health = health
        self._poll_s = poll_s
        self._done = False

    def __aiter__(self) -> RowStream:
        return self

    async def _next_item(self) -> object:
        queue = self.request.sink.queue
        while True:
            if not queue.empty():
                return queue.get_nowait()
            try:
                async with asyncio.timeout(self._poll_s):
                    return await queue.get()
            except TimeoutError:
                problem = None if self._health is None else self._health()
                if problem is not None and queue.empty():
                    self.cancel()
                    raise ModelError(problem) from None

    async def __anext__(self) -> str | Finished:
        if self._done:
            raise StopAsyncIteration
        item = await self._next_item()
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
