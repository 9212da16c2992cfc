"""The one sink of one answer: where its messages go, decided once, on first use.

An `Outlet` opens the thread `auto_thread` asks for, then posts through the persona's webhook or
as the bot; the waiting notice, the streamed reply and the rating hints all go through it. It
works from the `Destination` ids and the bot's client, never from the message it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

import discord

from bot.domain.persona import Persona
from bot.tasks import alongside
from bot.transports.discord.inbound import Destination
from bot.transports.discord.sinks import ChannelSink, WebhookSink
from bot.transports.discord.streaming import MessageSink
from bot.transports.discord.webhooks import WebhookDirectory

log = logging.getLogger(__name__)

DISCORD_CALL_S = 30.0  # a Discord request that takes longer than this is given up
TYPING_EVERY_S = 8.0  # Discord shows "typing" for 10 seconds


class Outlet:
    def __init__(
        self, client: discord.Client, webhooks: WebhookDirectory, destination: Destination, persona: Persona
    ) -> None:
        self.client = client
        self.webhooks = webhooks
        self.destination = destination
        self.persona = persona
        self._sink: MessageSink | None = None
        self._channel_id = destination.channel_id

    # -- MessageSink ----------------------------------------------------------------------------

    async def send(self, content: str, *, first: bool) -> int:
        sink = await self._resolved()
        async with asyncio.timeout(DISCORD_CALL_S):
            return await sink.send(content, first=first)

    async def edit(self, message_id: int, content: str) -> int:
        sink = await self._resolved()
        async with asyncio.timeout(DISCORD_CALL_S):
            return await sink.edit(message_id, content)

    async def delete(self, message_id: int) -> None:
        sink = await self._resolved()
        async with asyncio.timeout(DISCORD_CALL_S):
            await sink.delete(message_id)

    # -- around the reply -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """Show "typing" until the block ends; a failure to show it never fails the reply."""
        await self._resolved()
        channel = self.client.get_partial_messageable(self._channel_id, guild_id=self.destination.guild_id)

        async def keep_typing() -> None:
            while True:
                try:
                    async with asyncio.timeout(DISCORD_CALL_S):
                        await channel.typing()
                except (discord.HTTPException, TimeoutError) as exc:
                    log.debug("typing indicator failed: %s", exc)
                    return
                await asyncio.sleep(TYPING_EVERY_S)

        async with alongside(keep_typing(), name="typing"):
            yield

    async def react(self, message_id: int, emojis: Iterable[str]) -> None:
        """Add reactions (the rating hints); failures are only logged."""
        message = self.client.get_partial_messageable(self._channel_id).get_partial_message(message_id)
        try:
            async with asyncio.timeout(DISCORD_CALL_S):
                for emoji in emojis:
                    await message.add_reaction(emoji)
        except (discord.HTTPException, TimeoutError) as exc:
            log.debug("cannot add reactions in channel %s: %s", self._channel_id, exc)

    # -- deciding where ---------------------------------------------------------------------------

    async def _resolved(self) -> MessageSink:
        if self._sink is None:
            self._sink = await self._choose()
        return self._sink

    async def _choose(self) -> MessageSink:
        where = self.destination
        reply_to = where.reply_to
        if where.thread_title is not None and reply_to is not None:
            thread_id = await self._open_thread(reply_to, where.thread_title)
            if thread_id is not None:
                self._channel_id, reply_to = thread_id, None
        channel = self.client.get_partial_messageable(self._channel_id, guild_id=where.guild_id)
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(
                message_id=reply_to, channel_id=where.channel_id, guild_id=where.guild_id, fail_if_not_exists=False
            )
        plain = ChannelSink(channel, reference)
        if self.persona.identity is None or where.webhook_channel_id is None:
            return plain
        thread_id = self._channel_id if self._channel_id != where.webhook_channel_id else None
        return WebhookSink(self.webhooks, where.webhook_channel_id, thread_id, self.persona, plain)

    async def _open_thread(self, message_id: int, title: str) -> int | None:
        where = self.destination
        parent = self.client.get_channel(where.channel_id)
        if not isinstance(parent, discord.TextChannel):
            return None
        try:
            async with asyncio.timeout(DISCORD_CALL_S):
                thread = await parent.get_partial_message(message_id).create_thread(
                    name=title, auto_archive_duration=1440
                )
        except (discord.HTTPException, TimeoutError) as exc:
            log.warning("cannot open a thread in channel %s (%s); answering in place", where.channel_id, exc)
            return None
        return thread.id
