"""Handle each Discord message once, even when the gateway delivers it again after a reconnect,
or to another process.

A claim writes a fresh token (one per attempt) with SET NX and reads back whichever token holds the
key, in one script: the attempt that finds its own token owns the message. That also covers
redis-py's own retry: after a timeout it sends the same script again, which then finds the token
its first try wrote (a plain SET NX would report the message as someone else's and drop it).
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict

from bot.coordination.health import RedisHealth, StateUnavailable
from bot.redis_conn import RedisHandle

log = logging.getLogger(__name__)

CLAIM_TTL_S = 24 * 3600
LOCAL_CLAIMS = 100_000

CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


def _text(value: object) -> str | None:
    return value.decode() if isinstance(value, bytes) else None if value is None else str(value)


class RedisClaims:
    def __init__(self, redis: RedisHandle, *, ttl_s: int = CLAIM_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._script = redis.client.register_script(CLAIM)

    async def claim(self, message_id: str) -> bool:
        token = uuid.uuid4().hex
        holder = await self._script(keys=[self.redis.key("discord", "seen", message_id)], args=[token, self.ttl_s])
        return _text(holder) == token


class LocalClaims:
    """The message ids this process has claimed (the most recent `capacity`)."""

    def __init__(self, capacity: int = LOCAL_CLAIMS) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def claim(self, message_id: str) -> bool:
        return self.claim_now(message_id)

    def claim_now(self, message_id: str) -> bool:
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


class FallbackClaims:
    """Claims in this process first (no await between check and mark), then in Redis; without
    Redis the local claim stands, so a message is still answered (once per process)."""

    def __init__(self, redis: RedisClaims, health: RedisHealth, local: LocalClaims | None = None) -> None:
        self.redis = redis
        self.health = health
        self.local = local or LocalClaims()

    async def claim(self, message_id: str) -> bool:
        if not self.local.claim_now(message_id):
            return False
        try:
            return await self.health.attempt("claim a message", lambda: self.redis.claim(message_id))
        except StateUnavailable:
            log.info("message %s claimed by this process only (Redis unavailable)", message_id)
            return True
