"""Work that runs alongside a block: a task started when the block starts and stopped when it ends.

`alongside(coro)` is the one way the bot runs helpers like these (typing indicators, lease renewal,
watchers, the journal replayer, the embedded Redis watchdog): the task is cancelled when the block
ends, with a bounded wait for it to stop, and a crash is logged rather than lost or raised into
the block's own outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger(__name__)

#: How long the end of a block waits for its helper task to stop after cancelling it.
STOP_TASK_S = 5.0


@asynccontextmanager
async def alongside(coro: Coroutine[Any, Any, None] | None, *, name: str | None = None) -> AsyncIterator[None]:
    """Run `coro` as a task while the block runs (nothing when it is None); cancel it after."""
    if coro is None:
        yield
        return
    task = asyncio.create_task(coro, name=name or getattr(coro, "__qualname__", None))
    task.add_done_callback(_log_crash)
    try:
        yield
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_TASK_S)
        if not done:
            log.error("background task %s did not stop within %.0f s; leaving it", task.get_name(), STOP_TASK_S)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())
