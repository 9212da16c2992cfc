"""Reply slots: how many model calls may run at once, in total and per group (a Discord server).

In Redis each limit is a sorted set of lease tokens scored by their expiry (server time), so every
bot process counts against the same limits, and a lease its process no longer renews (a crash, a
kill -9) expires and frees its slot. A retried acquire finds its own token and keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter

from bot.coordination.health import RedisHealth, StateUnavailable
from bot.ports import SlotsFull
from bot.redis_conn import RedisHandle

log = logging.getLogger(__name__)

LEASE_TTL_S = 30.0  # renewed every third of this while a reply runs

_NOW = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

ACQUIRE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
  if #KEYS > 1 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 0
"""
)

RENEW = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
return 0
"""
)


class RedisSlots:
    def __init__(self, redis: RedisHandle, *, total: int, per_group: int, ttl_s: float = LEASE_TTL_S) -> None:
        self.redis = redis
        self.total = total
        self.per_group = per_group
        self.ttl_s = ttl_s
        self._acquire = redis.client.register_script(ACQUIRE)
        self._renew = redis.client.register_script(RENEW)
        self._groups: dict[str, str | None] = {}  # token -> group, for renew and release

    def _keys(self, group: str | None) -> list[str]:
        keys = [self.redis.key("discord", "slots", "all")]
        if group is not None:
            keys.append(self.redis.key("discord", "slots", "group", group))
        return keys

    async def acquire(self, group: str | None) -> str | SlotsFull:
        token = uuid.uuid4().hex
        args: list[str | int] = [token, int(self.ttl_s * 1000), self.total, self.per_group]
        result = int(await self._acquire(keys=self._keys(group), args=args))
        if result == 1:
            return SlotsFull.TOTAL
        if result == 2:
            return SlotsFull.GROUP
        self._groups[token] = group
        return token

    async def renew(self, token: str) -> None:
        if token in self._groups:
            await self._renew(keys=self._keys(self._groups[token]), args=[token, int(self.ttl_s * 1000)])

    async def release(self, token: str) -> None:
        group = self._groups.pop(token, None)
        async with self.redis.client.pipeline(transaction=False) as pipe:
            for key in self._keys(group):
                pipe.zrem(key, token)
            await pipe.execute()

    async def held(self, group: str | None = None) -> int:
        """Live leases (every process) on the total, or on one group."""
        key = self._keys(group)[-1]
        now_s, now_us = await self.redis.client.time()
        return int(await self.redis.client.zcount(key, f"({now_s * 1000 + now_us // 1000}", "+inf"))


class LocalSlots:
    """The same limits, counted in this process only."""

    def __init__(self, *, total: int, per_group: int) -> None:
        self.total = total
        self.per_group = per_group
        self._groups: dict[str, str | None] = {}
        self._per_group: Counter[str | None] = Counter()

    async def acquire(self, group: str | None) -> str | SlotsFull:
        return self.acquire_now(group)

    def acquire_now(self, group: str | None) -> str | SlotsFull:
        if len(self._groups) >= self.total:
            return SlotsFull.TOTAL
        if group is not None and self._per_group[group] >= self.per_group:
            return SlotsFull.GROUP
        token = uuid.uuid4().hex
        self._groups[token] = group
        self._per_group[group] += 1
        return token

    def owns(self, token: str) -> bool:
        return token in self._groups

    async def renew(self, token: str) -> None:
        return None

    async def release(self, token: str) -> None:
        if token in self._groups:
            group = self._groups.pop(token)
            self._per_group[group] -= 1
            if not self._per_group[group]:
                del self._per_group[group]


class FallbackSlots:
    """Leases in Redis; while Redis is away, leases counted in this process (and released there)."""

    def __init__(self, redis: RedisSlots, health: RedisHealth, local: LocalSlots | None = None) -> None:
        self.redis = redis
        self.health = health
        self.local = local or LocalSlots(total=redis.total, per_group=redis.per_group)

    async def acquire(self, group: str | None) -> str | SlotsFull:
        try:
            return await self.health.attempt("take a reply slot", lambda: self.redis.acquire(group))
        except StateUnavailable:
            return self.local.acquire_now(group)

    async def renew(self, token: str) -> None:
        if self.local.owns(token):
            return
        # A lease outlives a short outage; a long one lets it expire.
        with contextlib.suppress(StateUnavailable):
            await self.health.attempt("renew a reply slot", lambda: self.redis.renew(token))

    async def release(self, token: str) -> None:
        if self.local.owns(token):
            await self.local.release(token)
            return
        try:
            await self.health.attempt("release a reply slot", lambda: self.redis.release(token), always=True)
        except StateUnavailable:
            log.info("reply slot %s not released in Redis; it expires by itself", token)
