"""Serving the local model to many conversations at once: continuous batching + a prompt cache.

See docs/performance.md for how it works and what it measured.
"""

from bot.models.batching.prefix_cache import PrefixCache, PrefixKey, chat_prefix_length
from bot.models.batching.rows import Finished, RowStream, SoftPrompt
from bot.models.batching.scheduler import BatchScheduler, SchedulerStats

__all__ = [
    "BatchScheduler",
    "Finished",
    "PrefixCache",
    "PrefixKey",
    "RowStream",
    "SchedulerStats",
    "SoftPrompt",
    "chat_prefix_length",
]
