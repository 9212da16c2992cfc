"""Discord API objects as JSON dicts, shaped like the real API v10 sends them."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

DISCORD_EPOCH_MS = 1420070400000

#: Permission bits (https://discord.com/developers/docs/topics/permissions).
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
READ_MESSAGE_HISTORY = 1 << 16
ADD_REACTIONS = 1 << 6
MANAGE_CHANNELS = 1 << 4
MANAGE_WEBHOOKS = 1 << 29
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
MEMBER = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | ADD_REACTIONS | SEND_MESSAGES_IN_THREADS
BOT = MEMBER | MANAGE_WEBHOOKS | CREATE_PUBLIC_THREADS

_counter = itertools.count(1)


def snowflake(at: float | None = None) -> int:
    """A unique id that encodes the current time (or `at`, epoch seconds), as Discord's do."""
    ms = int((time.time() if at is None else at) * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (next(_counter) & 0x3FFFFF)


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that receives a server's events (Discord's formula)."""
    return (guild_id >> 22) % shard_count


def snowflake_on_shard(shard_id: int, shard_count: int) -> int:
    """A fresh id (e.g. a server's) whose events go to `shard_id` of `shard_count`."""
    ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
    ms -= (ms - shard_id) % shard_count
    return (ms << 22) | (next(_counter) & 0x3FFFFF)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> Json:
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def member(user_payload: Json, *, roles: list[int] | None = None, with_user: bool = True) -> Json:
    data: Json = {
        "roles": [str(r) for r in roles or []],
        "joined_at": now_iso(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "nick": None,
        "avatar": None,
    }
    if with_user:
        data["user"] = user_payload
    return data


def role(role_id: int, name: str, permissions: int) -> Json:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def text_channel(channel_id: int, guild_id: int, name: str) -> Json:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def thread(thread_id: int, parent: Json, name: str, owner_id: int) -> Json:
    return {
        "id": str(thread_id),
        "type": 11,
        "guild_id": parent["guild_id"],
        "parent_id": parent["id"],
        "owner_id": str(owner_id),
        "name": name,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": now_iso(),
            "locked": False,
        },
    }


def dm_channel(channel_id: int, recipient: Json) -> Json:
    return {"id": str(channel_id), "type": 1, "last_message_id": None, "recipients": [recipient], "flags": 0}


def guild(guild_id: int, name: str, owner_id: int, *, channels: list[Json], threads: list[Json],
          roles: list[Json], members: list[Json]) -> Json:  # fmt: skip
    return {
        "id": str(guild_id),
        "name": name,
        "icon": None,
        "owner_id": str(owner_id),
        "unavailable": False,
        "roles": roles,
        "emojis": [],
        "stickers": [],
        "features": [],
        "channels": channels,
        "threads": threads,
        "members": members,
        "member_count": len(members),
        "large": False,
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "premium_tier": 0,
        "preferred_locale": "en-US",
        "system_channel_id": None,
        "mfa_level": 0,
        "verification_level": 0,
        "explicit_content_filter": 0,
        "default_message_notifications": 0,
        "nsfw_level": 0,
        "afk_timeout": 300,
        "joined_at": now_iso(),
    }


def application(app_id: int, owner: Json) -> Json:
    return {
        "id": str(app_id),
        "name": "persona-bot-test",
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": owner,
        "team": None,
        "verify_key": "0" * 64,
        "flags": 0,
        "interactions_endpoint_url": None,
    }


def message(message_id: int, channel: Json, author: Json, content: str, **extra: Any) -> Json:
    data: Json = {
        "id": str(message_id),
        "channel_id": channel["id"],
        "author": author,
        "content": content,
        "timestamp": now_iso(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "components": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
    }
    if channel.get("guild_id"):
        data["guild_id"] = channel["guild_id"]
    data.update(extra)
    return data
