"""Abuse limits: a per-user cooldown and a per-channel cap on concurrent generations.

Both are per process: with several shards in separate processes each enforces its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class Cooldowns:
    """At most one request per `seconds` per key (a user id)."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: dict[int, float] = {}

    def allow(self, key: int) -> bool:
        """True (and the cooldown restarts) when `key` may go; False while it cools down."""
        if self.seconds <= 0:
            return True
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        self._last[key] = now
        if len(self._last) > 10_000:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        self._last = {k: t for k, t in self._last.items() if now - t < self.seconds}


class Busy(Exception):
    """The channel already runs and queues as many generations as allowed."""


@dataclass
class _Lane:
    slots: asyncio.Semaphore
    admitted: int = 0  # running + waiting


class ChannelGate:
    """`concurrency` generations run at once per channel, `queue` more wait; beyond that: Busy."""

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self._lanes: dict[int, _Lane] = {}

    def load(self, channel_id: int) -> int:
        lane = self._lanes.get(channel_id)
        return 0 if lane is None else lane.admitted

    @asynccontextmanager
    async def slot(self, channel_id: int) -> AsyncIterator[None]:
        """Run one generation in `channel_id`; raises Busy at once when the queue is full."""
        lane = self._lanes.setdefault(channel_id, _Lane(asyncio.Semaphore(self.concurrency)))
        if lane.admitted >= self.concurrency + self.queue:
            raise Busy(channel_id)
        lane.admitted += 1
        try:
            async with lane.slots:
                yield
        finally:
            lane.admitted -= 1
            if lane.admitted == 0:
                self._lanes.pop(channel_id, None)
