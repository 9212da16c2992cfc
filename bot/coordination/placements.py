"""Which persona speaks where: choices per server, channel and thread, kept in Redis.

Keys: <prefix>:discord:persona:<scope>:<id> -> persona id. Reading falls back to the choices last
read while Redis cannot be reached (or to none: the default persona), so replies go on; changing a
choice needs Redis and says so (StoreError).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from bot.coordination.health import RedisHealth, StateUnavailable
from bot.errors import StoreError
from bot.ports import PlaceRef
from bot.redis_conn import RedisHandle, store_errors

log = logging.getLogger(__name__)


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


def first_choice(chain: Sequence[PlaceRef], values: Sequence[str | None]) -> tuple[str, PlaceRef] | None:
    for place, value in zip(chain, values, strict=True):
        if value is not None:
            return value, place
    return None


class RedisPlacements:
    def __init__(self, redis: RedisHandle) -> None:
        self.redis = redis

    def _key(self, place: PlaceRef) -> str:
        return self.redis.key("discord", "persona", place[0], str(place[1]))

    async def values(self, chain: Sequence[PlaceRef]) -> list[str | None]:
        with store_errors("read the persona of a place"):
            return [_text(v) for v in await self.redis.client.mget([self._key(p) for p in chain])]

    async def lookup(self, chain: Sequence[PlaceRef]) -> tuple[str, PlaceRef] | None:
        return first_choice(chain, await self.values(chain))

    async def choose(self, place: PlaceRef, persona_id: str) -> None:
        with store_errors("store the persona of a place"):
            await self.redis.client.set(self._key(place), persona_id)

    async def clear(self, place: PlaceRef) -> bool:
        with store_errors("reset the persona of a place"):
            return bool(await self.redis.client.delete(self._key(place)))


class CachedPlacements:
    """Redis, remembering what it last said about each place for when it cannot be reached."""

    def __init__(self, redis: RedisPlacements, health: RedisHealth, *, capacity: int = 50_000) -> None:
        self.redis = redis
        self.health = health
        self.capacity = capacity
        self._known: dict[PlaceRef, str | None] = {}

    async def lookup(self, chain: Sequence[PlaceRef]) -> tuple[str, PlaceRef] | None:
        try:
            values = await self.health.attempt("read the persona of a place", lambda: self.redis.values(chain))
        except StateUnavailable:
            return first_choice(chain, [self._known.get(place) for place in chain])
        self._remember(dict(zip(chain, values, strict=True)))
        return first_choice(chain, values)

    async def choose(self, place: PlaceRef, persona_id: str) -> None:
        await self._write("store the persona of a place", lambda: self.redis.choose(place, persona_id))
        self._remember({place: persona_id})

    async def clear(self, place: PlaceRef) -> bool:
        removed = await self._write("reset the persona of a place", lambda: self.redis.clear(place))
        self._remember({place: None})
        return removed

    async def _write(self, what: str, call: Callable[[], Awaitable[object]]) -> bool:
        try:
            return bool(await self.health.attempt(what, call, always=True))
        except StateUnavailable as exc:
            raise StoreError(f"Redis did not answer in time to {what}") from exc

    def _remember(self, values: dict[PlaceRef, str | None]) -> None:
        if len(self._known) + len(values) > self.capacity:
            self._known.clear()
        self._known.update(values)
