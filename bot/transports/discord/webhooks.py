"""Channel webhooks, so personas post under their own name and avatar.

A persona without an uploaded avatar posts through the channel's shared webhook (`persona-bot`),
with its name and `avatar_url` on each message. A persona with `identity.avatar_path` gets its own
webhook per channel, created with that image as the webhook's avatar (`persona-bot:<id>:<digest>`):
Discord takes a per-message avatar only as a URL, and a local file has none. When the image
changes, the webhook is edited to the new one.

Webhooks are found or created on first use and cached. A webhook deleted meanwhile is forgotten by
the sender that hit it (`forget`) and recreated by the next lookup. Failures are not cached when
they may pass (server errors, timeouts, the network); refusals (4xx) are remembered for a minute.
Lookups of different channels run at once; those of the same webhook share one (a lock per key).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import discord

from bot.domain.persona import Persona

log = logging.getLogger(__name__)

WEBHOOK_NAME = "persona-bot"
LOOKUP_TIMEOUT_S = 20.0
REFUSED_RETRY_S = 60.0
MAX_AVATAR_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Avatar:
    data: bytes
    digest: str  # 8 hex characters of the image's SHA-256: part of the webhook's name


class AvatarFiles:
    """Avatar images read from disk once per change (off the event loop)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, Avatar]] = {}

    async def load(self, path: str) -> Avatar | None:
        try:
            return await asyncio.to_thread(self._read, path)
        except (OSError, ValueError) as exc:
            log.warning("cannot use the avatar %s (%s): the persona posts with the shared webhook", path, exc)
            return None

    def _read(self, path: str) -> Avatar:
        file = Path(path)
        mtime = file.stat().st_mtime
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        data = file.read_bytes()
        if len(data) > MAX_AVATAR_BYTES:
            raise ValueError(f"larger than {MAX_AVATAR_BYTES // (1024 * 1024)} MiB")
        if not is_image(data):
            raise ValueError("not a PNG, JPEG, GIF or WebP image")
        avatar = Avatar(data, hashlib.sha256(data).hexdigest()[:8])
        self._cache[path] = (mtime, avatar)
        return avatar


def is_image(data: bytes) -> bool:
    """The formats Discord takes as an avatar."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    )


def webhook_name(persona: Persona, avatar: Avatar | None) -> str:
    return WEBHOOK_NAME if avatar is None else f"{WEBHOOK_NAME}:{persona.id}:{avatar.digest}"[:80]


class WebhookDirectory:
    def __init__(self, client: discord.Client, avatars: AvatarFiles | None = None) -> None:
        self.client = client
        self.avatars = avatars or AvatarFiles()
        self._hooks: dict[tuple[int, str], discord.Webhook] = {}
        self._refused: dict[tuple[int, str], float] = {}  # key -> monotonic time to try again
        self._locks: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = weakref.WeakValueDictionary()

    async def webhook(self, channel_id: int, persona: Persona) -> discord.Webhook | None:
        """The webhook `persona` posts through in this text channel, or None (post as the bot)."""
        channel = self.client.get_channel(channel_id)
        if not isinstance(channel, discord.TextChannel):
            return None
        if not channel.permissions_for(channel.guild.me).manage_webhooks:
            log.info("no Manage Webhooks permission in #%s: personas post as the bot", channel.name)
            return None  # not cached: the permission may be granted later
        path = persona.identity.avatar_path if persona.identity is not None else None
        avatar = await self.avatars.load(path) if path else None
        name = webhook_name(persona, avatar)
        key = (channel_id, name)
        if (hook := self._hooks.get(key)) is not None:
            return hook
        if self._refused.get(key, 0.0) > time.monotonic():
            return None
        async with self._lock(key):
            if key not in self._hooks:
                hook = await self._find_or_create(channel, name, persona, avatar)
                if hook is None:
                    return None
                self._hooks[key] = hook
            return self._hooks[key]

    def forget(self, webhook: discord.Webhook) -> None:
        """Drop a webhook that Discord no longer knows (deleted): the next lookup makes a new one."""
        for key, hook in list(self._hooks.items()):
            if hook.id == webhook.id:
                del self._hooks[key]
                log.info("webhook %s in channel %s is gone; it will be recreated", webhook.id, key[0])

    def _lock(self, key: tuple[int, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _find_or_create(
        self, channel: discord.TextChannel, name: str, persona: Persona, avatar: Avatar | None
    ) -> discord.Webhook | None:
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                return await self._lookup(channel, name, persona, avatar)
        except discord.HTTPException as exc:
            if exc.status < 500 and exc.status != 429:
                self._refused[(channel.id, name)] = time.monotonic() + REFUSED_RETRY_S
            log.warning("cannot use a webhook in #%s (%s): posting as the bot", channel.name, exc)
        except (TimeoutError, OSError) as exc:
            log.warning("cannot use a webhook in #%s (%s): posting as the bot", channel.name, exc or "timeout")
        return None

    async def _lookup(
        self, channel: discord.TextChannel, name: str, persona: Persona, avatar: Avatar | None
    ) -> discord.Webhook:
        ours = [h for h in await channel.webhooks() if h.user == self.client.user and h.token]
        if found := next((h for h in ours if h.name == name), None):
            return found
        if avatar is not None:
            prefix = f"{WEBHOOK_NAME}:{persona.id}:"
            if stale := next((h for h in ours if (h.name or "").startswith(prefix)), None):
                return await stale.edit(name=name, avatar=avatar.data, reason="persona avatar changed")
        return await channel.create_webhook(
            name=name, avatar=avatar.data if avatar else None, reason="persona identities"
        )
