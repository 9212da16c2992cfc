"""Where reply messages go: the channel itself, or a persona's webhook (its own name and avatar).

Every send and edit passes `AllowedMentions.none()`: model output may contain @everyone, role or
user mentions and must never ping anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import discord

from bot.domain.persona import Persona

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
WEBHOOK_NAME = "persona-bot"
TYPING_EVERY_S = 8.0  # Discord shows "typing" for 10 seconds


class ChannelSink:
    """Messages posted by the bot itself; the first one replies to the user's message."""

    def __init__(self, channel: discord.abc.Messageable, reference: discord.Message | None) -> None:
        self.channel = channel
        self.reference = reference
        self._messages: dict[int, discord.Message] = {}

    async def send(self, content: str, *, first: bool) -> int:
        reference = self.reference.to_reference(fail_if_not_exists=False) if first and self.reference else None
        if reference is not None:
            message = await self.channel.send(content, reference=reference, allowed_mentions=NO_PINGS)
        else:
            message = await self.channel.send(content, allowed_mentions=NO_PINGS)
        self._messages[message.id] = message
        return message.id

    async def edit(self, message_id: int, content: str) -> None:
        self._messages[message_id] = await self._messages[message_id].edit(content=content, allowed_mentions=NO_PINGS)

    async def delete(self, message_id: int) -> None:
        await self._messages.pop(message_id).delete()


class WebhookSink:
    """Messages posted through a channel webhook under the persona's name and avatar."""

    def __init__(self, webhook: discord.Webhook, persona: Persona, thread: discord.Thread | None) -> None:
        self.webhook = webhook
        self.username = (persona.identity.name if persona.identity else None) or persona.name
        self.avatar_url = persona.identity.avatar_url if persona.identity else None
        self.thread: discord.abc.Snowflake = thread if thread is not None else discord.utils.MISSING

    async def send(self, content: str, *, first: bool) -> int:
        message = await self.webhook.send(
            content,
            username=self.username,
            avatar_url=self.avatar_url or discord.utils.MISSING,
            allowed_mentions=NO_PINGS,
            thread=self.thread,
            wait=True,
        )
        return message.id

    async def edit(self, message_id: int, content: str) -> None:
        await self.webhook.edit_message(message_id, content=content, allowed_mentions=NO_PINGS, thread=self.thread)

    async def delete(self, message_id: int) -> None:
        await self.webhook.delete_message(message_id, thread=self.thread)


class WebhookDirectory:
    """One webhook per text channel, found or created once and cached."""

    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self._hooks: dict[int, discord.Webhook | None] = {}
        self._lock = asyncio.Lock()

    async def sink_for(self, channel: object, persona: Persona) -> WebhookSink | None:
        """A webhook sink for `channel` (a text channel or its thread), or None when not possible."""
        thread = channel if isinstance(channel, discord.Thread) else None
        parent = thread.parent if thread is not None else channel
        if persona.identity is None or not isinstance(parent, discord.TextChannel):
            return None
        webhook = await self._webhook(parent)
        return None if webhook is None else WebhookSink(webhook, persona, thread)

    async def _webhook(self, channel: discord.TextChannel) -> discord.Webhook | None:
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            log.info("no Manage Webhooks permission in #%s: personas post as the bot", channel.name)
            return None  # not cached: the permission may be granted later
        async with self._lock:
            if channel.id not in self._hooks:
                self._hooks[channel.id] = await self._find_or_create(channel)
            return self._hooks[channel.id]

    async def _find_or_create(self, channel: discord.TextChannel) -> discord.Webhook | None:
        try:
            for hook in await channel.webhooks():
                if hook.user is not None and hook.user == self.client.user and hook.token:
                    return hook
            return await channel.create_webhook(name=WEBHOOK_NAME, reason="persona identities")
        except discord.HTTPException as exc:
            log.warning("cannot use a webhook in #%s (%s): personas post as the bot", channel.name, exc)
            return None


@contextlib.asynccontextmanager
async def typing_indicator(channel: discord.abc.Messageable) -> AsyncIterator[None]:
    """Show "typing" until the block ends; a failure to show it never fails the reply."""

    async def keep_typing() -> None:
        while True:
            try:
                await channel.typing()
            except discord.HTTPException as exc:
                log.debug("typing indicator failed: %s", exc)
                return
            await asyncio.sleep(TYPING_EVERY_S)

    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
