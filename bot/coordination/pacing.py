"""Per-user cooldowns as a schedule: a message may be answered `cooldown` after the user's previous
one, judged by when each was *sent* (its snowflake), never by when it is processed.

So a stall (Redis, the gateway, a busy process) never turns messages sent far apart into a false
cooldown, and a message sent too soon is not dropped: it gets a later start time and waits in the
queue (see the Discord transport's queue). Each reservation carries a token, so a retried call
returns its own reservation instead of pushing the schedule twice.
"""

from __future__ import annotations

import uuid

from bot.coordination.health import RedisHealth, StateUnavailable
from bot.redis_conn import RedisHandle

RESERVE = """
local sent, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local slot = sent
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ':', 1, true)
  local last = tonumber(string.sub(held, 1, sep - 1))
  if string.sub(held, sep + 1) == ARGV[3] then return last end
  slot = math.max(sent, last + cooldown)
end
redis.call('SET', KEYS[1], string.format('%d', slot) .. ':' .. ARGV[3])
redis.call('PEXPIREAT', KEYS[1], math.max(slot, now) + cooldown)
return slot
"""


def next_slot(last: float | None, sent_at: float, cooldown_s: float) -> float:
    return sent_at if last is None else max(sent_at, last + cooldown_s)


class RedisPacing:
    def __init__(self, redis: RedisHandle, cooldown_s: float) -> None:
        self.redis = redis
        self.cooldown_s = cooldown_s
        self._script = redis.client.register_script(RESERVE)

    async def reserve(self, user_id: str, sent_at: float) -> float:
        if self.cooldown_s <= 0:
            return sent_at
        key = self.redis.key("discord", "pace", user_id)
        args: list[str | int] = [int(sent_at * 1000), int(self.cooldown_s * 1000), uuid.uuid4().hex]
        return int(await self._script(keys=[key], args=args)) / 1000


class LocalPacing:
    def __init__(self, cooldown_s: float, *, capacity: int = 100_000) -> None:
        self.cooldown_s = cooldown_s
        self.capacity = capacity
        self._last: dict[str, float] = {}

    async def reserve(self, user_id: str, sent_at: float) -> float:
        if self.cooldown_s <= 0:
            return sent_at
        slot = next_slot(self._last.get(user_id), sent_at, self.cooldown_s)
        self._last[user_id] = slot
        if len(self._last) > self.capacity:
            newest = sorted(self._last.items(), key=lambda item: item[1])[-self.capacity // 2 :]
            self._last = dict(newest)
        return slot


class FallbackPacing:
    def __init__(self, redis: RedisPacing, health: RedisHealth, local: LocalPacing | None = None) -> None:
        self.redis = redis
        self.health = health
        self.local = local or LocalPacing(redis.cooldown_s)

    async def reserve(self, user_id: str, sent_at: float) -> float:
        if self.redis.cooldown_s <= 0:
            return sent_at
        try:
            return await self.health.attempt("pace a user", lambda: self.redis.reserve(user_id, sent_at))
        except StateUnavailable:
            return await self.local.reserve(user_id, sent_at)
