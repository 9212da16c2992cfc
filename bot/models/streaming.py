"""Stream a LangChain chat model without its per-call run bookkeeping when nothing listens to it.

`BaseChatModel.astream` configures a callback manager, opens a run (copying the prompt for tracing),
reports every chunk, merges all chunks into a final generation and closes the run, even when no
callback, tracer or debug handler is configured. For a fast backend that costs more than the model
itself (about 0.3 ms a call, more than a Redis round trip). When LangChain would configure no
handler, `stream_chat` calls the model's `_astream` directly and makes the same per-chunk edits
`astream` makes: the run's message id, the merged response metadata, a closing
`chunk_position="last"` chunk, and a ValueError for an empty stream. In every other case
(callbacks, tracing, debug, a surrounding Runnable, a rate limiter, v1 output, a model that cannot
stream, non-text content) it is exactly `astream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.utils.utils import LC_ID_PREFIX
from langchain_core.utils.uuid import uuid7

try:
    # The very helper astream uses for each chunk's response metadata, so both paths agree.
    from langchain_core.language_models.chat_models import _gen_info_and_msg_metadata

    _FAST_PATH_AVAILABLE = True
except ImportError:  # pragma: no cover - a langchain-core without it: always use astream
    _FAST_PATH_AVAILABLE = False


def can_skip_run_manager(model: BaseChatModel, messages: Sequence[BaseMessage]) -> bool:
    """True when `astream` would do nothing observable beyond what `stream_chat` reproduces."""
    if not _FAST_PATH_AVAILABLE:
        return False
    # Inside a Runnable the inherited config may carry callbacks, tags or a run id: keep astream.
    if var_child_runnable_config.get() is not None:
        return False
    # astream's own test: False means it falls back to ainvoke (no streaming, or streaming disabled).
    if not model._should_stream(async_api=True, stream=True):
        return False
    if model.rate_limiter is not None or model.output_version == "v1":
        return False
    # astream normalizes list (multimodal) content into v1 blocks; text content passes unchanged.
    if not all(isinstance(m.content, str) for m in messages):
        return False
    # LangChain's own decision, with the arguments astream passes: model callbacks, verbose, debug,
    # LangSmith tracing (environment or context) and registered configure hooks all add handlers.
    # (It raises for the retired v1 tracing variables, as astream would.)
    return not AsyncCallbackManager.configure(None, model.callbacks, model.verbose).handlers


async def stream_chat(model: BaseChatModel, messages: list[BaseMessage]) -> AsyncIterator[AIMessageChunk]:
    """The chunks `model.astream(messages)` yields, skipping the run bookkeeping when nothing listens."""
    if not can_skip_run_manager(model, messages):
        async for chunk in model.astream(messages):
            yield chunk
        return
    run_id = f"{LC_ID_PREFIX}-{uuid7()}"
    last: AIMessageChunk | None = None
    async for generation in model._astream(messages, stop=None):
        message = generation.message
        if message.id is None:
            message.id = run_id
        message.response_metadata = _gen_info_and_msg_metadata(generation)
        last = cast(AIMessageChunk, message)
        yield last
    if last is None:
        raise ValueError("No generation chunks were returned")
    if isinstance(last, AIMessageChunk) and not last.chunk_position:
        yield AIMessageChunk(content="" if isinstance(last.content, str) else [], chunk_position="last", id=run_id)
