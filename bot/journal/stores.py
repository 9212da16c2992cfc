"""The engine's door to its stores: reads that degrade and writes that are never lost.

    stores = JournaledStores(memory, feedback, journal, rewrite_disk=PersistenceRewriter(redis, timeout=60))
    await stores.reply_shown(record, turns)      # acknowledged by Redis, or journaled
    outcome = await stores.rate_message(rating)  # "rated", "withdrawn", "ignored" or "queued"

A write goes to Redis first; on a StoreError (refused, timed out, stalled) it goes to the journal
and the caller is told it is "queued": either way it is kept. While Redis is known to be down, or
while older writes still wait in the journal, new writes go straight to the journal, behind them:
no one waits for a dead server twice, and writes reach Redis in the order they were made. The
replayer (bot.journal.replayer) applies the journal when Redis answers again.

Memory that cannot be loaded is not a failure: the reply is generated without remembered turns
(logged once per outage), and its own turns are journaled like any other write.

Redis acknowledges a write before it is in its append-only file: with `appendfsync everysec`, a
write that arrives while a background fsync runs waits up to 2 s, so a redis-server killed then
loses writes it acknowledged. The writes Redis acknowledged in the last `RECENT_S` seconds are kept
in memory: when an outage is noticed they go to the head of the journal (replayed first, and kept
across a restart of the bot), and when Redis restarted unnoticed (the replayer sees a new run id)
they are applied again. Every write is idempotent, so a write Redis did keep counts once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bot.domain.feedback import FailedReply, Rating, ReplyRecord
from bot.domain.messages import StoredTurn
from bot.domain.ratings import MessageRating, RateOutcome
from bot.domain.writes import (
    AppendTurns,
    ClearConversation,
    ForgetUser,
    LinkMessages,
    RateMessage,
    RateReply,
    RecordReply,
    Write,
)
from bot.errors import StoreError, WriteQueued
from bot.ports import FeedbackLog, Journal, MemoryStore

log = logging.getLogger(__name__)

_QUEUED = object()  # the result of a write that went to the journal

#: How long an acknowledged write is kept in memory in case Redis loses it (everysec: up to ~2 s).
RECENT_S = 5.0
#: At most this many of them (at a very high write rate the oldest go first; logged).
RECENT_MAX = 20_000


class JournaledStores:
    def __init__(
        self,
        memory: MemoryStore,
        feedback: FeedbackLog,
        journal: Journal | None = None,
        *,
        rewrite_disk: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.memory = memory
        self.feedback = feedback
        self.journal = journal
        #: Rewrites the store's files after a deletion, so forgotten words leave the disk.
        self.rewrite_disk = rewrite_disk
        #: False from the first failure until the replayer hears Redis answer again.
        self.redis_up = True
        #: Set when the replayer has work (a write was journaled, Redis failed).
        self.wakeup = asyncio.Event()
        #: Writes Redis acknowledged lately, oldest first: (when, write).
        self._recent: deque[tuple[float, Write]] = deque()

    # -- health ------------------------------------------------------------------------------------

    async def down(self, exc: BaseException) -> None:
        """Redis failed: from now on writes go to the journal, behind the ones Redis acknowledged lately."""
        self.wakeup.set()
        if not self.redis_up:
            return
        log.warning("Redis is unavailable (%s): replies go without memory and writes to the journal until it is "
                    "back", exc)  # fmt: skip
        self.redis_up = False
        if self.journal is not None:
            recent = self._take_recent()
            await self.journal.prepend(recent)

    async def reapply_recent(self) -> int:
        """Apply the writes Redis acknowledged lately again (it restarted and may have lost them)."""
        recent = [w for _, w in self._pruned()]
        for write in recent:
            await self._apply(write)
        return len(recent)

    def up(self) -> None:
        if not self.redis_up:
            log.warning("Redis answers again: remembered turns are back; the journal is being replayed")
            self.redis_up = True

    @property
    def memory_available(self) -> bool:
        """Whether remembered turns can be read now (False while Redis is known to be down)."""
        return self.journal is None or self.redis_up

    @property
    def bypass(self) -> bool:
        """Write to the journal without trying Redis: it is down, or older writes wait there."""
        return self.journal is not None and (not self.redis_up or self.journal.pending)

    # -- reads -------------------------------------------------------------------------------------

    async def history(self, conversation_id: str, max_turns: int) -> list[StoredTurn]:
        """The remembered turns, or none while Redis is down (without a journal: the StoreError)."""
        if self.journal is None:
            return await self.memory.load(conversation_id, max_turns)
        if not self.redis_up:
            return []
        try:
            return await self.memory.load(conversation_id, max_turns)
        except StoreError as exc:
            await self.down(exc)
            return []

    # -- writes ------------------------------------------------------------------------------------

    async def reply_failed(self, failure: FailedReply) -> None:
        """Note a reply the model never wrote. Telemetry for experiment guardrails, not a user's
        write: best effort, never journaled, never raises (the user is already being told)."""
        if not self.redis_up:
            return
        try:
            await self.feedback.record_failure(failure)
        except StoreError as exc:
            log.warning("cannot note a failed reply of %s: %s", failure.persona_id, exc)

    async def reply_shown(self, record: ReplyRecord, turns: AppendTurns | None) -> None:
        """Keep a finished reply: its record and, when the persona remembers, its turns."""
        await self._write([RecordReply(record), turns] if turns is not None else [RecordReply(record)])

    async def rate(self, rating: Rating) -> RateOutcome:
        """Raises ReplyNotFound when Redis answers that the reply is unknown."""
        [result] = await self._write([RateReply(rating)])
        return "queued" if result is _QUEUED else result

    async def rate_message(self, rating: MessageRating) -> RateOutcome:
        [result] = await self._write([RateMessage(rating)])
        return "queued" if result is _QUEUED else result

    async def link(self, reply_id: str, external_ids: Sequence[str]) -> None:
        if external_ids:
            await self._write([LinkMessages(reply_id, tuple(external_ids))])

    async def reset(self, conversation_id: str) -> None:
        """Forget one conversation's memory; raises WriteQueued when Redis is down (done when it is back)."""
        if self.journal is not None:
            await self.journal.forget_conversation(conversation_id)
        self._drop_recent(lambda w: isinstance(w, AppendTurns) and w.conversation_id == conversation_id)
        await self._now_or_queued(ClearConversation(conversation_id), "forgetting this conversation")

    async def forget_user(self, user_id: str) -> tuple[int, int]:
        """Delete the user's words and ratings everywhere, on disk too: (messages, records).

        The journal drops the user's writes at once; when Redis is down, this raises WriteQueued and
        the deletion runs when it is back.
        """
        if self.journal is not None:
            await self.journal.forget_user(user_id)
        self._drop_recent(lambda w: user_id in w.users)
        result = await self._now_or_queued(ForgetUser(user_id), "deleting your data")
        return result

    async def apply(self, write: Write) -> Any:
        """Apply one write to the stores now (idempotent: safe to repeat); raises StoreError."""
        result = await self._apply(write)
        self._remember(write)
        return result

    async def _apply(self, write: Write) -> Any:
        match write:
            case RecordReply(record=record):
                await self.feedback.record(record)
            case AppendTurns():
                await self.memory.append(
                    write.conversation_id,
                    write.turns,
                    max_turns=write.max_turns,
                    ttl_seconds=write.ttl_seconds,
                    reply_id=write.reply_id,
                )
            case RateReply(rating=rating):
                return await self.feedback.rate(rating)
            case RateMessage(rating=message_rating):
                return await self.feedback.rate_message(message_rating)
            case LinkMessages(reply_id=reply_id, external_ids=external_ids):
                await asyncio.gather(*(self.feedback.link(e, reply_id) for e in external_ids))
            case ForgetUser(user_id=user_id):
                messages = await self.memory.forget_user(user_id)
                records = await self.feedback.forget_user(user_id)
                if self.rewrite_disk is not None:
                    await self.rewrite_disk()
                return messages, records
            case ClearConversation(conversation_id=conversation_id):
                await self.memory.clear(conversation_id)
        return None

    # -- internals ---------------------------------------------------------------------------------

    async def _write(self, writes: list[Write]) -> list[Any]:
        """Apply the writes (concurrently: one round trip), journaling those Redis did not take."""
        if self.journal is None:
            return list(await asyncio.gather(*(self.apply(w) for w in writes)))
        if self.bypass:
            await self._journal(writes)
            return [_QUEUED] * len(writes)
        results = list(await asyncio.gather(*(self.apply(w) for w in writes), return_exceptions=True))
        failed = [i for i, r in enumerate(results) if isinstance(r, StoreError)]
        if failed:
            await self.down(results[failed[0]])
            await self._journal([writes[i] for i in failed])
            for i in failed:
                results[i] = _QUEUED
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _now_or_queued(self, write: Write, what: str) -> Any:
        if self.journal is None:
            return await self.apply(write)
        if not self.redis_up:
            await self._journal([write])
            raise WriteQueued(what)
        try:
            return await self.apply(write)
        except StoreError as exc:
            await self.down(exc)
            await self._journal([write])
            raise WriteQueued(what) from exc

    async def _journal(self, writes: list[Write]) -> None:
        assert self.journal is not None
        await self.journal.append(writes)
        self.wakeup.set()

    def _remember(self, write: Write) -> None:
        if self.journal is None:
            return
        self._recent.append((time.monotonic(), write))
        self._pruned()

    def _pruned(self) -> deque[tuple[float, Write]]:
        recent, horizon = self._recent, time.monotonic() - RECENT_S
        while recent and recent[0][0] < horizon:
            recent.popleft()
        if len(recent) > RECENT_MAX:
            log.warning("over %d writes in %.0f s: the oldest are no longer kept in case Redis loses them",
                        RECENT_MAX, RECENT_S)  # fmt: skip
            while len(recent) > RECENT_MAX:
                recent.popleft()
        return recent

    def _take_recent(self) -> list[Write]:
        recent = [w for _, w in self._pruned()]
        self._recent.clear()
        return recent

    def _drop_recent(self, forgotten: Callable[[Write], bool]) -> None:
        self._recent = deque(item for item in self._recent if not forgotten(item[1]))
