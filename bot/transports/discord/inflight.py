"""Messages being answered (waiting in line or generating), so that a user can stop them.

A message is stopped when it is deleted and when its author asks to be forgotten (`/forget-me`),
whether it still waits or is being answered; a reply being generated is also stopped when its
conversation is forgotten (`/forget`; otherwise the finishing reply would write the forgotten
conversation back into memory; messages still waiting are answered afterwards, in the fresh
conversation). Stopping cancels the task: the engine's stream is closed, which frees the reply's
row in the local model's batch at the next decode step, and nothing is remembered or recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

STOP_WAIT_S = 2.0  # how long a stop waits for the reply to wind down (an interaction must answer in 3 s)
SHUTTING_DOWN = "the bot is shutting down"


class ReplyStopped(Exception):
    """The reply was stopped by a user (see InFlight); not an error."""

    def __init__(self, message_id: int, reason: str) -> None:
        super().__init__(f"reply to message {message_id} stopped: {reason}")
        self.message_id = message_id
        self.reason = reason


@dataclass
class _Entry:
    conversation_id: str
    user_id: str
    task: asyncio.Task[Any]
    reason: str = ""
    generating: bool = False


class InFlight:
    """Generation tasks by the Discord message that asked for them."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, message_id: int, conversation_id: str, user_id: str, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` as a stoppable task; raises ReplyStopped when one of the stop_* methods ended it.

        Cancelling the caller cancels the work too (and re-raises CancelledError, as usual).
        """
        task = asyncio.ensure_future(work)
        entry = _Entry(conversation_id, user_id, task)
        self._entries[message_id] = entry
        try:
            return await task
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if entry.reason and (caller is None or not caller.cancelling()):
                raise ReplyStopped(message_id, entry.reason) from None
            raise
        finally:
            if self._entries.get(message_id) is entry:
                del self._entries[message_id]

    def generating(self, message_id: int) -> None:
        """The message's reply is being generated now (it no longer waits in line)."""
        if (entry := self._entries.get(message_id)) is not None:
            entry.generating = True

    async def stop_messages(self, message_ids: Iterable[int], reason: str = "the message was deleted") -> int:
        """Stop the replies to these messages (those in progress); returns how many."""
        return await self._stop([e for m in message_ids if (e := self._entries.get(m)) is not None], reason)

    async def stop_conversation(self, conversation_id: str, reason: str = "the conversation was forgotten") -> int:
        """Stop every reply being generated in a conversation; returns how many."""
        entries = [e for e in self._entries.values() if e.conversation_id == conversation_id and e.generating]
        return await self._stop(entries, reason)

    async def stop_user(self, user_id: str, reason: str = "its author asked to be forgotten") -> int:
        """Stop every reply asked for by one user; returns how many."""
        return await self._stop([e for e in self._entries.values() if e.user_id == user_id], reason)

    async def shut_down(self, grace_s: float) -> None:
        """Stop what still waits in line; give replies being generated `grace_s` to finish, then stop them."""
        await self._stop([e for e in self._entries.values() if not e.generating], SHUTTING_DOWN)
        writing = [e.task for e in self._entries.values() if e.generating]
        if writing:
            await asyncio.wait(writing, timeout=grace_s)
        await self._stop(list(self._entries.values()), SHUTTING_DOWN)

    @staticmethod
    async def _stop(entries: list[_Entry], reason: str) -> int:
        """Cancel, then wait until the tasks have ended: a caller that deletes data next (/forget)
        must not race a reply that is still writing it."""
        stopping = [e for e in entries if not e.task.done() and not e.reason]
        for entry in stopping:
            entry.reason = reason
            entry.task.cancel()
        if stopping:
            await asyncio.wait([e.task for e in stopping], timeout=STOP_WAIT_S)
        return len(stopping)
