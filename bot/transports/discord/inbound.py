"""The edge: a Discord message is read once into an `Inbound`, the plain value that every later step
(claim, queue, engine, sink) works on. Nothing after `read_message` looks at discord.py objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.domain.messages import Speaker
from bot.settings import DiscordSettings
from bot.transports.discord.ids import sent_at, user_id
from bot.transports.discord.places import (
    IsOurMessage,
    Place,
    Trigger,
    channel_label,
    place_of,
    prompt_text,
    trigger_for,
    truncate,
)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to answer: a channel or thread (by id), replying to a message; with `thread_title`,
    in a new thread opened on that message first (`auto_thread`)."""

    channel_id: int
    guild_id: int | None
    #: The text channel whose webhooks can post here (a thread's parent); None where there are none.
    webhook_channel_id: int | None
    reply_to: int | None
    thread_title: str | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message to answer."""

    message_id: int
    sent_at: float  # epoch seconds, from the message id (when the user sent it)
    place: Place
    speaker: Speaker
    text: str  # as the model should read it: without the bot's mention, cut to max_input_chars
    truncated: bool
    trigger: Trigger
    answer_at: Destination
    channel_label: str
    server_name: str

    @property
    def conversation_id(self) -> str:
        return self.place.conversation_id


def _webhook_channel(channel: object) -> int | None:
    if isinstance(channel, discord.Thread):
        return channel.parent_id if isinstance(channel.parent, discord.TextChannel) else None
    return channel.id if isinstance(channel, discord.TextChannel) else None


def _thread_title(text: str) -> str:
    return (text.splitlines() or [""])[0][:80].strip() or "Conversation"


async def read_message(
    message: discord.Message, me: discord.abc.User, settings: DiscordSettings, is_ours: IsOurMessage
) -> Inbound | None:
    """The message as an Inbound, or None when the bot should stay silent."""
    trigger = await trigger_for(message, me, settings, is_ours)
    if trigger is None:
        return None
    text, truncated = truncate(prompt_text(message, me), settings.max_input_chars)
    channel = message.channel
    place = place_of(channel, message.author.id)
    label = channel_label(channel)
    answer_at = Destination(place.here, place.guild_id, _webhook_channel(channel), message.id)
    if settings.auto_thread and trigger is Trigger.MENTION and isinstance(channel, discord.TextChannel):
        # Discord gives a thread opened on a message the message's id: the conversation is known now.
        title = _thread_title(text)
        place = Place(place.guild_id, place.channel_id, message.id, place.user_id)
        answer_at = Destination(channel.id, place.guild_id, channel.id, message.id, thread_title=title)
        label = f"#{title}"
    return Inbound(
        message_id=message.id,
        sent_at=sent_at(message.id),
        place=place,
        speaker=Speaker(user_id(message.author), message.author.display_name),
        text=text,
        truncated=truncated,
        trigger=trigger,
        answer_at=answer_at,
        channel_label=label,
        server_name=message.guild.name if message.guild is not None else "",
    )
