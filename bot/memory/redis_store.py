"""Conversation memory in Redis: one list of JSON turns per conversation.

Keys (prefix `bot`):
    bot:mem:<conversation>        LIST of turns, newest last, capped at 2 * max_turns, with a TTL
    bot:memdone:<conversation>    ZSET of the reply ids whose turns were appended (the newest few),
                                  so appending the same reply's turns twice is a no-op
    bot:user:<user>:convs         SET of conversations the user wrote in (for /forget-me)

Loading is one command; appending is one atomic Lua script (one command and one reply on the wire,
where a MULTI/EXEC transaction of the same writes costs the client a reply per queued command).
An append that timed out may still have been applied (a stalled server runs it when it resumes)
and is then replayed from the write journal: the reply id makes the second one a no-op.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import fields

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


# Appends turns once per reply id and keeps the indexes, atomically.
# KEYS[1] the conversation list, KEYS[2] its applied-replies zset, KEYS[3..] each writer's conversation set.
# ARGV[1] turns kept (2 * max_turns), ARGV[2] TTL in seconds (0: none), ARGV[3] conversation id,
# ARGV[4] reply id ('' : no idempotency key), ARGV[5] the time (zset score), ARGV[6..] the turns' JSON
# (pushed in slices: unpack() is bounded by Lua's stack). Returns 0 when the reply was already applied.
_APPEND_SCRIPT = """
local rid = ARGV[4]
if rid ~= '' and redis.call('ZSCORE', KEYS[2], rid) then return 0 end
for i = 6, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local keep = tonumber(ARGV[1])
redis.call('LTRIM', KEYS[1], -keep, -1)
local ttl = tonumber(ARGV[2])
if rid ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[5], rid)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(keep + 65))
  if ttl ~= 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if ttl ~= 0 then redis.call('EXPIRE', KEYS[i], ttl) end
end
if ttl ~= 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


_TURN_FIELDS = tuple(f.name for f in fields(StoredTurn))


def _encode_turn(turn: StoredTurn) -> str:
    # The same JSON object asdict() would give (every field is a plain value), without its deep copy.
    return json.dumps({name: getattr(turn, name) for name in _TURN_FIELDS}, ensure_ascii=False)


@functools.lru_cache(maxsize=8192)
def _decode_turn(raw: bytes) -> StoredTurn:
    # Every message re-reads most of the conversation's window: the same stored bytes always decode
    # to the same (frozen, immutable) turn, so each item is parsed once while it is recent.
    return StoredTurn(**json.loads(raw))


def _decode_turns(raw: Sequence[bytes | str]) -> list[StoredTurn]:
    return [_decode_turn(item if isinstance(item, bytes) else item.encode()) for item in raw]


class RedisMemoryStore:
    def __init__(self, redis: RedisHandle) -> None:
        self.redis = redis
        self._forget = redis.script(_FORGET_SCRIPT)
        self._append = redis.script(_APPEND_SCRIPT)

    def _key(self, conversation_id: str) -> str:
        return self.redis.key("mem", conversation_id)

    def _done_key(self, conversation_id: str) -> str:
        return self.redis.key("memdone", conversation_id)

    def _user_key(self, user_id: str) -> str:
        return self.redis.key("user", user_id, "convs")

    async def load(self, conversation_id: str, max_turns: int) -> list[StoredTurn]:
        if max_turns <= 0:
            return []
        with store_errors("load conversation memory"):
            raw = await self.redis.client.lrange(self._key(conversation_id), -2 * max_turns, -1)
        return _decode_turns(raw)

    async def append(
        self,
        conversation_id: str,
        turns: Sequence[StoredTurn],
        *,
        max_turns: int,
        ttl_seconds: int,
        reply_id: str | None = None,
    ) -> None:
        if max_turns <= 0 or not turns:
            return
        users = sorted({t.user_id for t in turns if t.user_id})
        with store_errors("save conversation memory"):
            await self._append(
                keys=[self._key(conversation_id), self._done_key(conversation_id), *(self._user_key(u) for u in users)],
                args=[
                    2 * max_turns,
                    ttl_seconds,
                    conversation_id,
                    reply_id or "",
                    repr(turns[-1].at),
                    *(_encode_turn(t) for t in turns),
                ],
            )

    async def clear(self, conversation_id: str) -> None:
        _decode_turn.cache_clear()  # forgotten means gone from this process's memory too
        with store_errors("clear conversation memory"):
            await self.redis.client.delete(self._key(conversation_id), self._done_key(conversation_id))

    async def forget_user(self, user_id: str) -> int:
        _decode_turn.cache_clear()
        with store_errors("forget a user's messages"):
            conversations = await self.redis.client.smembers(self._user_key(user_id))
            removed = 0
            for conversation in conversations:
                conversation_id = conversation.decode() if isinstance(conversation, bytes) else conversation
                removed += int(await self._forget(keys=[self._key(conversation_id)], args=[user_id]))
            await self.redis.client.delete(self._user_key(user_id))
        return removed
