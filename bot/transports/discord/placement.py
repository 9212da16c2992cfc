"""Which persona speaks where: overrides per server, channel and thread, stored in Redis.

Keys: <prefix>:discord:persona:<scope>:<id> -> persona id. The most specific override wins:
thread, then channel, then server; without any, the default persona speaks.
"""

from __future__ import annotations

import enum

from bot.redis_conn import RedisHandle, store_errors
from bot.transports.discord.places import Place


class Scope(enum.StrEnum):
    THREAD = "thread"
    CHANNEL = "channel"
    SERVER = "server"


class PersonaPlacements:
    def __init__(self, redis: RedisHandle) -> None:
        self.redis = redis

    def _key(self, scope: Scope, place_id: int) -> str:
        return self.redis.key("discord", "persona", scope.value, str(place_id))

    @staticmethod
    def chain(place: Place) -> list[tuple[Scope, int]]:
        """The scopes that apply to `place`, most specific first."""
        chain: list[tuple[Scope, int]] = []
        if place.thread_id is not None:
            chain.append((Scope.THREAD, place.thread_id))
        chain.append((Scope.CHANNEL, place.channel_id))
        if place.guild_id is not None:
            chain.append((Scope.SERVER, place.guild_id))
        return chain

    async def resolve(self, place: Place) -> tuple[str, Scope] | None:
        """The persona chosen for `place` and where it was chosen, or None (use the default)."""
        chain = self.chain(place)
        with store_errors("read the persona of a place"):
            values = await self.redis.client.mget([self._key(scope, pid) for scope, pid in chain])
        for (scope, _), value in zip(chain, values, strict=True):
            if value is not None:
                return (value.decode() if isinstance(value, bytes) else str(value)), scope
        return None

    async def set(self, scope: Scope, place_id: int, persona_id: str) -> None:
        with store_errors("store the persona of a place"):
            await self.redis.client.set(self._key(scope, place_id), persona_id)

    async def clear(self, scope: Scope, place_id: int) -> bool:
        """Remove an override; True when there was one."""
        with store_errors("reset the persona of a place"):
            return bool(await self.redis.client.delete(self._key(scope, place_id)))
