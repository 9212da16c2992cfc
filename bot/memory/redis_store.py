"""Conversation memory in Redis: one list of JSON turns per conversation.

Keys (prefix `bot`):
    bot:mem:<conversation>        LIST of turns, newest last, capped at 2 * max_turns, with a TTL
    bot:user:<user>:convs         SET of conversations the user wrote in (for /forget-me)

Loading is one command; appending is one pipelined transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from bot.domain.messages import StoredTurn
from bot.redis_conn import RedisHandle, store_errors

# Drops one user's turns from a list atomically (cjson is built into Redis' Lua).
_FORGET_SCRIPT = """
local kept, removed = {}, 0
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ok, turn = pcall(cjson.decode, raw)
  if ok and turn['user_id'] == ARGV[1] then removed = removed + 1 else table.insert(kept, raw) end
end
if removed > 0 then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('DEL', KEYS[1])
  for i = 1, #kept, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(kept, i, math.min(i + 999, #kept)))
  end
  if ttl > 0 and #kept > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return removed
"""


class RedisMemoryStore:
    def __init__(self, redis: RedisHandle) -> None:
        self.redis = redis
        self._forget = redis.client.register_script(_FORGET_SCRIPT)

    def _key(self, conversation_id: str) -> str:
        return self.redis.key("mem", conversation_id)

    def _user_key(self, user_id: str) -> str:
        return self.redis.key("user", user_id, "convs")

    async def load(self, conversation_id: str, max_turns: int) -> list[StoredTurn]:
        if max_turns <= 0:
            return []
        with store_errors("load conversation memory"):
            raw = await self.redis.client.lrange(self._key(conversation_id), -2 * max_turns, -1)
        return [StoredTurn(**json.loads(item)) for item in raw]

    async def append(
        self, conversation_id: str, turns: Sequence[StoredTurn], *, max_turns: int, ttl_seconds: int
    ) -> None:
        if max_turns <= 0 or not turns:
            return
        key = self._key(conversation_id)
        with store_errors("save conversation memory"):
            async with self.redis.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(json.dumps(asdict(t), ensure_ascii=False) for t in turns))
                pipe.ltrim(key, -2 * max_turns, -1)
                for user_id in {t.user_id for t in turns if t.user_id}:
                    pipe.sadd(self._user_key(user_id), conversation_id)
                    if ttl_seconds:
                        pipe.expire(self._user_key(user_id), ttl_seconds)
                if ttl_seconds:
                    pipe.expire(key, ttl_seconds)
                await pipe.execute()

    async def clear(self, conversation_id: str) -> None:
        with store_errors("clear conversation memory"):
            await self.redis.client.delete(self._key(conversation_id))

    async def forget_user(self, user_id: str) -> int:
        with store_errors("forget a user's messages"):
            conversations = await self.redis.client.smembers(self._user_key(user_id))
            removed = 0
            for conversation in conversations:
                conversation_id = conversation.decode() if isinstance(conversation, bytes) else conversation
                removed += int(await self._forget(keys=[self._key(conversation_id)], args=[user_id]))
            await self.redis.client.delete(self._user_key(user_id))
        return removed
