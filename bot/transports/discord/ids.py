"""How the rest of the bot names Discord things: users, the messages that show a reply, times."""

from __future__ import annotations

import discord

DISCORD_EPOCH_MS = 1420070400000


def user_id(user: discord.abc.Snowflake | int) -> str:
    return f"discord:{user if isinstance(user, int) else user.id}"


def external_id(message_id: int) -> str:
    """How the feedback log names a Discord message showing a reply."""
    return f"discord:msg:{message_id}"


def sent_at(snowflake: int) -> float:
    """When a Discord object was created (epoch seconds), read from its id."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000
