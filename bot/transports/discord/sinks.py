"""Where reply messages go: the channel itself, or a persona's webhook (its own name and avatar).

Sinks work from ids (discord.py's partial objects), never from the message they answer. Every
send and edit passes `AllowedMentions.none()`: model output may contain @everyone, role or user
mentions and must never ping anyone.
"""

from __future__ import annotations

import logging

import discord

from bot.domain.persona import Persona
from bot.transports.discord.webhooks import WebhookDirectory

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
UNKNOWN_WEBHOOK = 10015


class ChannelSink:
    """Messages posted by the bot itself; the first one replies to `reply_to`, when given.

    A message someone deleted meanwhile (a moderator, say) is posted again rather than edited.
    """

    def __init__(self, channel: discord.PartialMessageable, reply_to: discord.MessageReference | None) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self._first: int | None = None

    async def send(self, content: str, *, first: bool) -> int:
        if first and self.reply_to is not None:
            message = await self.channel.send(content, reference=self.reply_to, allowed_mentions=NO_PINGS)
        else:
            message = await self.channel.send(content, allowed_mentions=NO_PINGS)
        if first:
            self._first = message.id
        return message.id

    async def edit(self, message_id: int, content: str) -> int:
        try:
            await self.channel.get_partial_message(message_id).edit(content=content, allowed_mentions=NO_PINGS)
        except discord.NotFound:
            log.info("message %s is gone; posting its text again", message_id)
            return await self.send(content, first=message_id == self._first)
        return message_id

    async def delete(self, message_id: int) -> None:
        await self.channel.get_partial_message(message_id).delete()


class WebhookSink:
    """Messages posted through the persona's webhook; where that fails for good, through `fallback`.

    A webhook deleted while in use is forgotten and recreated, and the message sent again: a send
    is retried once on a new webhook, and a message whose webhook is gone is replaced by a new one
    (the old one is deleted where the bot may, else it stays as it was).
    """

    def __init__(
        self,
        webhooks: WebhookDirectory,
        channel_id: int,
        thread_id: int | None,
        persona: Persona,
        fallback: ChannelSink,
    ) -> None:
        self.webhooks = webhooks
        self.channel_id = channel_id
        self.thread: discord.abc.Snowflake = discord.Object(thread_id) if thread_id else discord.utils.MISSING
        self.persona = persona
        identity = persona.identity
        self.username = (identity.name if identity else None) or persona.name
        self.avatar_url = (identity.avatar_url if identity else None) or discord.utils.MISSING
        self.fallback = fallback
        self._posted_by: dict[int, discord.Webhook] = {}

    async def send(self, content: str, *, first: bool) -> int:
        for attempt in range(2):
            webhook = await self.webhooks.webhook(self.channel_id, self.persona)
            if webhook is None:
                break
            try:
                message = await webhook.send(
                    content, username=self.username, avatar_url=self.avatar_url,
                    allowed_mentions=NO_PINGS, thread=self.thread, wait=True,
                )  # fmt: skip
            except discord.NotFound:
                self.webhooks.forget(webhook)
                log.info("webhook gone while posting in channel %s (try %d)", self.channel_id, attempt + 1)
                continue
            except discord.HTTPException as exc:
                # A server error after discord.py's own retries, or a refusal that retrying cannot fix
                # (a persona name Discord does not allow for webhooks, a missing permission).
                log.warning("webhook send failed in channel %s (%s): posting as the bot", self.channel_id, exc)
                break
            self._posted_by[message.id] = webhook
            return message.id
        return await self.fallback.send(content, first=first)

    async def edit(self, message_id: int, content: str) -> int:
        webhook = self._posted_by.get(message_id)
        if webhook is None:
            return await self.fallback.edit(message_id, content)
        try:
            await webhook.edit_message(message_id, content=content, allowed_mentions=NO_PINGS, thread=self.thread)
            return message_id
        except discord.NotFound as exc:
            if exc.code == UNKNOWN_WEBHOOK:
                self.webhooks.forget(webhook)
            replacement = await self.send(content, first=False)
            await self._delete_stranded(message_id)
            return replacement

    async def delete(self, message_id: int) -> None:
        webhook = self._posted_by.pop(message_id, None)
        if webhook is None:
            await self.fallback.delete(message_id)
            return
        try:
            await webhook.delete_message(message_id, thread=self.thread)
        except discord.NotFound as exc:
            if exc.code == UNKNOWN_WEBHOOK:
                self.webhooks.forget(webhook)
                await self._delete_stranded(message_id)

    async def _delete_stranded(self, message_id: int) -> None:
        """A message whose webhook is gone: only the bot's Manage Messages can remove it."""
        self._posted_by.pop(message_id, None)
        try:
            await self.fallback.channel.get_partial_message(message_id).delete()
        except discord.HTTPException as exc:
            log.info("cannot delete message %s of a deleted webhook: %s", message_id, exc)
