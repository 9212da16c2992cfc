"""Handle each Discord message once, even when the gateway redelivers it after a reconnect.

A message id is claimed with SET NX in Redis, so the claim also holds across shards and processes.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from bot.redis_conn import RedisHandle

log = logging.getLogger(__name__)

SEEN_TTL_S = 24 * 3600


class SeenMessages:
    def __init__(self, redis: RedisHandle, *, ttl_s: int = SEEN_TTL_S) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def claim(self, message_id: int) -> bool:
        """True the first time a message id is claimed; False for a redelivery.

        When Redis fails the claim succeeds (the reply itself will then report the failure).
        """
        key = self.redis.key("discord", "seen", str(message_id))
        try:
            return bool(await self.redis.client.set(key, "1", nx=True, ex=self.ttl_s))
        except (RedisError, OSError) as exc:
            log.warning("cannot check message %s for redelivery: %s", message_id, exc)
            return True
