"""Stream a reply into Discord by editing messages, at most once per interval.

The growing text is re-split on every update (see `bot.domain.splitting`): the last message is
edited, and when the text outgrows it the next message is sent. Only messages whose text changed
are edited. The first update goes out at once; later ones wait for the interval to pass, and
`finish` always shows the final text.

A message that waits in the queue may first show a notice (`notice`): the reply then takes over
that message, so the user's message gets one answer, never a notice plus a reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from bot.domain.splitting import DISCORD_LIMIT, split_message

EMPTY_REPLY = "-# (no reply)"


class MessageSink(Protocol):
    """Where a reply's messages go: a channel, or a persona's webhook."""

    async def send(self, content: str, *, first: bool) -> int:
        """Post a new message; returns its id."""
        ...

    async def edit(self, message_id: int, content: str) -> int:
        """Change a message; returns its id (a new one when the message had to be posted again)."""
        ...

    async def delete(self, message_id: int) -> None: ...


class ReplyStream:
    def __init__(
        self,
        sink: MessageSink,
        *,
        interval: float,
        header: str = "",
        limit: int = DISCORD_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.header = header
        self.limit = limit
        self.clock = clock
        self.message_ids: list[int] = []
        self._shown: list[str] = []
        self._text = ""
        self._last_update: float | None = None

    @property
    def text(self) -> str:
        return self._text

    async def push(self, delta: str) -> None:
        """Add streamed text; updates Discord when the interval has passed."""
        self._text += delta
        if self._text.strip() and self._due():
            await self._update()

    async def notice(self, text: str) -> None:
        """Show `text` (e.g. how long the wait is) in the first message, until the reply replaces it."""
        if self._text:
            return
        if not self.message_ids:
            self.message_ids.append(await self.sink.send(text, first=True))
            self._shown.append(text)
        elif self._shown[0] != text:
            self.message_ids[0] = await self.sink.edit(self.message_ids[0], text)
            self._shown[0] = text

    async def finish(self, text: str) -> list[int]:
        """Show the final text (whatever the interval) and return the ids of every message."""
        self._text = text
        await self._update(final=True)
        return list(self.message_ids)

    async def fail(self, note: str) -> list[int]:
        """End a broken reply: append `note` to what was shown, or post it alone."""
        shown = self._text.strip()
        self._text = f"{shown}\n\n{note}" if shown and self.message_ids else note
        await self._update(final=True)
        return list(self.message_ids)

    async def withdraw(self) -> None:
        """Delete every message shown so far (a stopped reply)."""
        while self.message_ids:
            await self.sink.delete(self.message_ids.pop())
            self._shown.pop()

    def _due(self) -> bool:
        return self._last_update is None or self.clock() - self._last_update >= self.interval

    async def _update(self, *, final: bool = False) -> None:
        chunks = split_message(self.header + self._text.lstrip(), self.limit)
        if not chunks:
            if not final:
                return
            chunks = [EMPTY_REPLY]
        for index, chunk in enumerate(chunks):
            if index < len(self.message_ids):
                if self._shown[index] != chunk:
                    self.message_ids[index] = await self.sink.edit(self.message_ids[index], chunk)
                    self._shown[index] = chunk
            else:
                self.message_ids.append(await self.sink.send(chunk, first=index == 0))
                self._shown.append(chunk)
        while len(self.message_ids) > len(chunks):  # the final text is shorter than streamed
            await self.sink.delete(self.message_ids.pop())
            self._shown.pop()
        self._last_update = self.clock()
