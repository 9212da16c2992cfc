"""Where a message was said: its conversation, its persona scopes, and whether to answer it.

A thread is its own conversation, a server channel is one conversation, and a DM is one
conversation per user.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from bot.settings import DiscordSettings


@dataclass(frozen=True, slots=True)
class Place:
    guild_id: int | None
    channel_id: int  # the text channel (a thread's parent) or the DM channel
    thread_id: int | None
    user_id: int  # who spoke (a DM conversation belongs to this user)

    @property
    def is_dm(self) -> bool:
        return self.guild_id is None

    @property
    def conversation_id(self) -> str:
        if self.thread_id is not None:
            return f"discord:thread:{self.thread_id}"
        if self.guild_id is None:
            return f"discord:dm:{self.user_id}"
        return f"discord:channel:{self.channel_id}"

    @property
    def here(self) -> int:
        """The id of the exact place: the thread, else the channel."""
        return self.thread_id if self.thread_id is not None else self.channel_id


def place_of(channel: object, user_id: int) -> Place:
    guild = getattr(channel, "guild", None)
    guild_id = guild.id if guild is not None else None
    channel_id = getattr(channel, "id", 0)
    if isinstance(channel, discord.Thread):
        return Place(guild_id, channel.parent_id, channel.id, user_id)
    return Place(guild_id, channel_id, None, user_id)


def channel_label(channel: object) -> str:
    if isinstance(channel, discord.DMChannel) or getattr(channel, "guild", None) is None:
        return "direct messages"
    return f"#{getattr(channel, 'name', 'channel')}"


class Trigger(enum.Enum):
    MENTION = "mention"
    DM = "dm"
    REPLY = "reply"
    ALWAYS = "always"


IsOurMessage = Callable[[int], Awaitable[bool]]


def mentions_me(message: discord.Message, me: discord.abc.User) -> bool:
    """A direct mention of the bot (or of its own role); @everyone and @here do not count."""
    if any(user.id == me.id for user in message.mentions):
        return True
    self_role = message.guild.self_role if message.guild is not None else None
    return self_role is not None and any(role.id == self_role.id for role in message.role_mentions)


async def trigger_for(
    message: discord.Message, me: discord.abc.User, settings: DiscordSettings, is_ours: IsOurMessage
) -> Trigger | None:
    """Why the bot should answer this message, or None to stay silent."""
    if message.author.bot or message.webhook_id is not None or message.is_system():
        return None
    if message.guild is None:
        return Trigger.DM if settings.answer_in_dms else None
    if mentions_me(message, me):
        return Trigger.MENTION
    if await _replies_to_us(message, me, is_ours):
        return Trigger.REPLY
    place = place_of(message.channel, message.author.id)
    if place.channel_id in settings.always_answer_channels or place.here in settings.always_answer_channels:
        return Trigger.ALWAYS
    return None


async def _replies_to_us(message: discord.Message, me: discord.abc.User, is_ours: IsOurMessage) -> bool:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return False
    resolved = reference.resolved
    if isinstance(resolved, discord.Message) and resolved.author.id == me.id:
        return True
    return await is_ours(reference.message_id)  # e.g. a persona's webhook message


_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")
_CHANNEL = re.compile(r"<#(\d+)>")


def prompt_text(message: discord.Message, me: discord.abc.User) -> str:
    """The message as the model should read it: without the bot's mention, others as names."""
    users = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    self_role = message.guild.self_role if message.guild is not None else None

    def user(m: re.Match[str]) -> str:
        uid = int(m.group(1))
        return "" if uid == me.id else f"@{users.get(uid, 'someone')}"

    def role(m: re.Match[str]) -> str:
        rid = int(m.group(1))
        return "" if self_role is not None and rid == self_role.id else f"@{roles.get(rid, 'role')}"

    def channel(m: re.Match[str]) -> str:
        found = message.guild.get_channel_or_thread(int(m.group(1))) if message.guild else None
        return f"#{found.name}" if found is not None else "#channel"

    text = _CHANNEL.sub(channel, _ROLE.sub(role, _USER.sub(user, message.content)))
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def truncate(text: str, limit: int) -> tuple[str, bool]:
    return (text, False) if len(text) <= limit else (text[:limit], True)
