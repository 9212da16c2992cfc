"""How the fallback stores talk to Redis: a deadline per call and a short back-off after a failure.

A stalled Redis (SIGSTOP, a full network buffer) answers nothing, so every call needs its own end;
once one call has failed, the others skip Redis for `retry_after_s` instead of each waiting out
the deadline, and the state falls back to this process's own until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from bot.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


class StateUnavailable(Exception):
    """Redis did not answer in time (or at all); use the local state."""


class RedisHealth:
    def __init__(
        self, timeout_s: float, *, retry_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._down_until: float | None = None

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

    def usable(self) -> bool:
        return self._down_until is None or self.clock() >= self._down_until

    async def attempt(self, what: str, call: Callable[[], Awaitable[T]], *, always: bool = False) -> T:
        """`call()` within the deadline; raises StateUnavailable when it fails or stalls.

        Skipped (StateUnavailable at once) during the back-off after a failure, unless `always`.
        """
        if not always and not self.usable():
            raise StateUnavailable(what)
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except (RedisError, StoreError, OSError, TimeoutError) as exc:
            self._failed(what, exc)
            raise StateUnavailable(what) from exc
        self._recovered()
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._down_until is None:
            reason = str(exc) or type(exc).__name__
            log.warning("Redis failed to %s (%s): using this process's own Discord state for now", what, reason)
        self._down_until = self.clock() + self.retry_after_s

    def _recovered(self) -> None:
        if self._down_until is not None:
            log.warning("Redis answers again: Discord state is shared again")
            self._down_until = None
