"""Helpers for tests that drive the batch scheduler directly: prompts, streams, schedulers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from bot.models.batching import BatchScheduler, Finished, RowStream
from bot.models.local_loader import LoadedModel


def encode(loaded: LoadedModel, question: str, system: str = "Answer in one short sentence.") -> list[int]:
    """The chat-template token ids of a system message and one question."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return list(loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])


async def collect(stream: RowStream, timeout_s: float = 120) -> Finished:
    """The stream's Finished result (every wait in the tests has an end)."""
    async with stream, asyncio.timeout(timeout_s):
        async for item in stream:
            if isinstance(item, Finished):
                return item
    raise AssertionError("stream ended without Finished")


@contextlib.contextmanager
def scheduler(model: Any, tokenizer: Any, **kwargs: Any) -> Iterator[BatchScheduler]:
    s = BatchScheduler(model, tokenizer, **kwargs)
    try:
        yield s
    finally:
        s.close()


async def run_rows(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batched: bool = True,
                   **kwargs: Any) -> list[tuple[int, ...]]:
    """Each row's generated token ids: all rows in one batch, or one at a time."""
    with scheduler(model, tokenizer, max_batch=8 if batched else 1, **kwargs) as s:
        if batched:
            results = await asyncio.gather(*(collect(s.submit(**row)) for row in rows))
            assert s.stats.max_rows == len(rows)
        else:
            results = [await collect(s.submit(**row)) for row in rows]
    return [r.token_ids for r in results]
