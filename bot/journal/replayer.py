"""Applies journaled writes to Redis, in order, once it answers again. Runs as one supervised task
from the composition root, from start-up (a journal left by an earlier run is replayed too).

Every write is idempotent at the store (bot.feedback.redis_log, bot.memory.redis_store), so a write
that Redis took although the bot saw a timeout, or a batch replayed again after a crash between
applying and deleting it, counts once. A write that can never apply (a rating of a reply that is
gone, a bug) is set aside with a log line instead of blocking the ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bot.errors import ReplyNotFound, StoreError
from bot.journal.stores import JournaledStores
from bot.ports import Journal

log = logging.getLogger(__name__)


class Replayer:
    """`server_id` returns the Redis server's run id (raises StoreError when it does not answer): a
    new one means the server restarted, and may have lost the writes it acknowledged last."""

    def __init__(
        self,
        stores: JournaledStores,
        journal: Journal,
        server_id: Callable[[], Awaitable[str]],
        *,
        batch: int = 100,
        retry_max_s: float = 2.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self.stores = stores
        self.journal = journal
        self.server_id = server_id
        self._server: str | None = None
        self.batch = batch
        self.retry_min_s = min(0.05, retry_max_s)
        self.retry_max_s = retry_max_s
        self.idle_poll_s = idle_poll_s
        self.replayed = 0  # writes applied from the journal by this process
        self._attempt = asyncio.Condition()
        self._attempts = 0

    async def run(self) -> None:
        """Forever: drain whenever there is work, back off while Redis is down. Never dies of an error."""
        delay = self.retry_min_s
        while True:
            # redis-py's async client can swallow a cancellation that lands during a command (its
            # issues #2028, #2551): the request count stays, so look at it rather than loop forever.
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError
            try:
                done = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replaying the write journal failed; retrying")
                done = False
            async with self._attempt:
                self._attempts += 1
                self._attempt.notify_all()
            if done:
                delay = self.retry_min_s
                await self._sleep(self.idle_poll_s, wake_early=True)
            else:
                await self._sleep(delay, wake_early=False)
                delay = min(delay * 2, self.retry_max_s)

    async def drain(self) -> bool:
        """Apply journaled writes until none is left. False while Redis is down or another process drains."""
        self.stores.wakeup.clear()
        try:
            server = await self.server_id()
            if self._server is not None and server != self._server and self.stores.redis_up:
                again = await self.stores.reapply_recent()
                log.warning("Redis restarted (new run id): applied its last %d acknowledged writes again", again)
            self._server = server
        except StoreError as exc:
            await self.stores.down(exc)
            return False
        self.stores.up()  # reads work again; writes still queue behind the journal until it drains
        if not self.journal.pending and await self.journal.settle():
            return True
        if not self.journal.claim_replay():
            await self.journal.settle()  # another process replays; notice when it is done
            return False
        try:
            applied = await self._apply_all()
        finally:
            self.journal.release_replay()
        if applied is None:
            return False
        if applied:
            self.replayed += applied
            log.warning("replayed %d journaled writes into Redis", applied)
        return await self.journal.settle()

    async def settled(self) -> None:
        """Wait until the journal is empty and Redis answers; bound it with `asyncio.timeout`."""
        while not (self.stores.redis_up and not self.journal.pending and await self.journal.settle()):
            async with self._attempt:
                seen = self._attempts
                self.stores.wakeup.set()
                await self._attempt.wait_for(lambda seen=seen: self._attempts > seen)  # type: ignore[misc]

    async def _apply_all(self) -> int | None:
        """Apply every pending write in order; the number applied, or None when Redis failed midway."""
        total = 0
        while batch := await self.journal.oldest(self.batch):
            done: list[int] = []
            try:
                for entry_id, write in batch:
                    try:
                        await self.stores.apply(write)
                    except StoreError as exc:
                        await self.stores.down(exc)
                        return None
                    except ReplyNotFound as exc:
                        log.info("journaled rating dropped: %s (expired or forgotten)", exc)
                    except Exception as exc:
                        log.exception("journaled %s write %s failed", write.kind, entry_id)
                        await self.journal.bury(entry_id, f"{type(exc).__name__}: {exc}")
                        continue
                    done.append(entry_id)
            finally:
                await self.journal.remove(done)
                total += len(done)
        return total

    async def _sleep(self, seconds: float, *, wake_early: bool) -> None:
        if not wake_early:
            await asyncio.sleep(seconds)
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races its result.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stores.wakeup.wait()
