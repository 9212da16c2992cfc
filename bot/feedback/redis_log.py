"""Reply records and ratings in Redis, built to stay cheap at a million replies.

Keys (prefix `bot`; <sk> is the stats key "persona|version|variant"):
    bot:reply:<id>              STRING  the ReplyRecord JSON (expires after the prompt retention)
    bot:reply:<id>:meta         HASH    persona/version/variant/user/created/day (kept for counting;
                                        its "user" field goes with /forget-me)
    bot:reply:<id>:links        SET     the external ids showing the reply (expires with the record)
    bot:ratings:<id>            HASH    user -> +1 / -1
    bot:ratings:<id>:ctx        HASH    user -> JSON of where the rating came from (discord ids...)
    bot:ratings:<id>:at         HASH    user -> time of the user's latest rating event (also a removal)
    bot:stats:<sk>              HASH    replies / up / down counters, forever
    bot:daily:<sk>              HASH    "<YYYY-MM-DD>:replies|up|down" counters, forever
    bot:stats:index             SET     every <sk> (the report enumerates these, never KEYS)
    bot:replies                 ZSET    reply id by creation time
    bot:rated                   ZSET    rated reply ids by creation time
    bot:persona:<pid>:rated     ZSET    the same, per persona
    bot:user:<uid>:replies      SET     replies whose prompt holds this user's words (for /forget-me)
    bot:user:<uid>:rated        SET     replies this user rated   (for /forget-me)
    bot:ext:<external id>       STRING  transport message id -> reply id (expires with the record)
    bot:failures:<pid>          ZSET    replies never written (model failures), by time (30 days, 10,000)

Every write is one atomic Lua script, and every one is safe to apply twice, because a write that
timed out may have been applied and is then replayed from the journal (bot.journal):
- recording a reply is a no-op when its meta hash exists (the meta outlives the record);
- a rating event carries its time and applies only if it is not older than the user's latest event
  on that reply, so replays and late events converge on the latest; the counters move by the
  difference between the old and the new value, so they never drift;
- a rating given on a transport message (a Discord reaction) is resolved to its reply inside the
  script, and a removed reaction withdraws the rating only if it is the user's stored one, judged
  there too, atomically, whenever the event is applied.
The rating and link scripts derive key names from the prefix, so the log needs a standalone Redis
(not Cluster), as the rest of the bot does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast

from bot.domain.feedback import FailedReply, RatedReply, Rating, ReplyRecord, new_reply_id
from bot.domain.ratings import MessageRating, RateOutcome
from bot.errors import ReplyNotFound
from bot.redis_conn import RedisHandle, store_errors

PAGE = 200
#: Failed replies kept per persona (for experiment guardrails), and for how long.
FAILURES_KEPT = 10_000
FAILURES_DAYS = 30

# ARGV: 1 prefix, 2 reply id ('': resolve the external id), 3 external id, 4 user, 5 value (-1, 0, 1),
#       6 removed (1: withdraw only if the stored value is ARGV[5]), 7 event time, 8 context JSON.
# Returns {outcome, reply id}: rated, withdrawn, ignored (a removal that was not the user's rating),
# stale (older than the user's latest event), nolink, noreply.
_RATE_SCRIPT = """
local p, user = ARGV[1], ARGV[4]
local rid = ARGV[2]
if rid == '' then
  rid = redis.call('GET', p .. ':ext:' .. ARGV[3])
  if not rid then return {'nolink', ''} end
end
local meta = p .. ':reply:' .. rid .. ':meta'
local sk = redis.call('HGET', meta, 'sk')
if not sk then return {'noreply', rid} end
local times = p .. ':ratings:' .. rid .. ':at'
local last = redis.call('HGET', times, user)
if last and tonumber(last) > tonumber(ARGV[7]) then return {'stale', rid} end
local ratings = p .. ':ratings:' .. rid
local old = tonumber(redis.call('HGET', ratings, user) or '0')
local new = tonumber(ARGV[5])
if ARGV[6] == '1' then
  if old ~= new then return {'ignored', rid} end
  new = 0
end
redis.call('HSET', times, user, ARGV[7])
redis.call('SADD', p .. ':user:' .. user .. ':rated', rid)
if old ~= new then
  local stats, daily, day = p .. ':stats:' .. sk, p .. ':daily:' .. sk, redis.call('HGET', meta, 'day')
  if old == 1 then redis.call('HINCRBY', stats, 'up', -1); redis.call('HINCRBY', daily, day .. ':up', -1) end
  if old == -1 then redis.call('HINCRBY', stats, 'down', -1); redis.call('HINCRBY', daily, day .. ':down', -1) end
  if new == 1 then redis.call('HINCRBY', stats, 'up', 1); redis.call('HINCRBY', daily, day .. ':up', 1) end
  if new == -1 then redis.call('HINCRBY', stats, 'down', 1); redis.call('HINCRBY', daily, day .. ':down', 1) end
end
if new == 0 then
  redis.call('HDEL', ratings, user); redis.call('HDEL', ratings .. ':ctx', user)
  return {'withdrawn', rid}
end
redis.call('HSET', ratings, user, new); redis.call('HSET', ratings .. ':ctx', user, ARGV[8])
local created = redis.call('HGET', meta, 'created')
redis.call('ZADD', p .. ':rated', 'NX', created, rid)
redis.call('ZADD', p .. ':persona:' .. string.match(sk, '^[^|]*') .. ':rated', 'NX', created, rid)
return {'rated', rid}
"""

# Stores a reply record and counts it, atomically and once: a no-op when the reply's meta exists.
# KEYS: 1 reply, 2 reply meta, 3 stats, 4 daily, 5 stats index, 6 replies zset, 7.. users' reply sets.
# ARGV: 1 record JSON, 2 expiry in seconds (0: never), 3 reply id, 4 repr(created_at) (the ZADD score
#       and the meta "created"), 5 stats key, 6 day (YYYY-MM-DD), 7 persona, 8 persona version,
#       9 variant, 10 user. (Field names live in the script: fewer arguments to encode and send.)
_RECORD_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local ex = tonumber(ARGV[2])
if ex > 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ex) else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], 'persona', ARGV[7], 'version', ARGV[8], 'variant', ARGV[9], 'user', ARGV[10],
           'created', ARGV[4], 'day', ARGV[6], 'sk', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'replies', 1)
redis.call('HINCRBY', KEYS[4], ARGV[6] .. ':replies', 1)
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
for i = 7, #KEYS do redis.call('SADD', KEYS[i], ARGV[3]) end
return 1
"""

# Links transport messages to a reply; the links expire with the reply's record (or after the
# retention, ARGV[3] seconds, if the record is not stored yet). A forgotten reply (meta without
# "user") is not linked again. ARGV: 1 prefix, 2 reply id, 3 retention in seconds (0: none), 4.. ids.
_LINK_SCRIPT = """
local p, rid = ARGV[1], ARGV[2]
local meta = p .. ':reply:' .. rid .. ':meta'
if redis.call('EXISTS', meta) == 1 and redis.call('HEXISTS', meta, 'user') == 0 then return 0 end
local links = p .. ':reply:' .. rid .. ':links'
local ttl = redis.call('PTTL', p .. ':reply:' .. rid)
if ttl == -2 then ttl = tonumber(ARGV[3]) * 1000 end
for i = 4, #ARGV do
  local key = p .. ':ext:' .. ARGV[i]
  redis.call('SET', key, rid)
  redis.call('SADD', links, ARGV[i])
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
end
if ttl > 0 then redis.call('PEXPIRE', links, ttl) end
return 1
"""


def stats_key(persona_id: str, version: str, variant: str) -> str:
    return f"{persona_id}|{version}|{variant}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFeedbackLog:
    def __init__(self, redis: RedisHandle, *, retention_days: int = 0) -> None:
        self.redis = redis
        self.retention_s = retention_days * 86400
        self._rate = redis.script(_RATE_SCRIPT)
        self._record = redis.script(_RECORD_SCRIPT)
        self._link = redis.script(_LINK_SCRIPT)

    def k(self, *parts: str) -> str:
        return self.redis.key(*parts)

    async def record(self, record: ReplyRecord) -> None:
        rid, sk = record.reply_id, stats_key(record.persona_id, record.persona_version, record.variant)
        day = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d")
        users = sorted({record.user_id, *record.participants})
        with store_errors("record a reply"):
            await self._record(
                keys=[
                    self.k("reply", rid),
                    self.k("reply", rid, "meta"),
                    self.k("stats", sk),
                    self.k("daily", sk),
                    self.k("stats", "index"),
                    self.k("replies"),
                    *(self.k("user", user, "replies") for user in users),
                ],
                args=[
                    record.to_json(),
                    self.retention_s,
                    rid,
                    repr(record.created_at),
                    sk,
                    day,
                    record.persona_id,
                    record.persona_version,
                    record.variant,
                    record.user_id,
                ],
            )

    async def get(self, reply_id: str) -> ReplyRecord | None:
        with store_errors("read a reply"):
            raw = await self.redis.client.get(self.k("reply", reply_id))
        return None if raw is None else ReplyRecord.from_json(raw)

    async def rate(self, rating: Rating) -> RateOutcome:
        """Apply one rating event (value 0 withdraws); raises ReplyNotFound for an unknown reply."""
        outcome, _ = await self._apply_rating(
            rating.reply_id, "", rating.user_id, rating.value, False, rating.at, rating.context
        )
        if outcome == "noreply":
            raise ReplyNotFound(rating.reply_id)
        return _outcome(outcome)

    async def rate_message(self, rating: MessageRating) -> RateOutcome:
        """Apply a rating given on a transport message; "ignored" when the message shows no reply."""
        outcome, _ = await self._apply_rating(
            "", rating.external_id, rating.user_id, rating.value, rating.removed, rating.at, rating.context
        )
        return _outcome(outcome)

    async def _apply_rating(
        self, reply_id: str, external_id: str, user: str, value: int, removed: bool, at: float, context: dict[str, str]
    ) -> tuple[str, str]:
        with store_errors("store a rating"):
            outcome, rid = await self._rate(
                keys=[],
                args=[
                    self.redis.prefix,
                    reply_id,
                    external_id,
                    user,
                    value,
                    int(removed),
                    repr(at),
                    json.dumps({**context, "at": at}, ensure_ascii=False),
                ],
            )
        return _text(outcome), _text(rid)

    async def ratings(self, reply_id: str) -> dict[str, int]:
        with store_errors("read ratings"):
            raw = await self.redis.client.hgetall(self.k("ratings", reply_id))
        return {_text(user): int(value) for user, value in raw.items()}

    async def rating_contexts(self, reply_id: str) -> dict[str, dict[str, object]]:
        with store_errors("read rating contexts"):
            raw = await self.redis.client.hgetall(self.k("ratings", reply_id, "ctx"))
        return {_text(user): json.loads(value) for user, value in raw.items()}

    async def link(self, external_id: str, reply_id: str) -> None:
        with store_errors("link a message to a reply"):
            await self._link(keys=[], args=[self.redis.prefix, reply_id, self.retention_s, external_id])

    async def resolve(self, external_id: str) -> str | None:
        with store_errors("look up a message"):
            raw = await self.redis.client.get(self.k("ext", external_id))
        return None if raw is None else _text(raw)

    async def stats(self) -> dict[str, dict[str, int]]:
        """Counters per "persona|version|variant": replies, up, down (kept forever)."""
        with store_errors("read rating counters"):
            keys = sorted(_text(k) for k in await self.redis.client.smembers(self.k("stats", "index")))
            async with self.redis.client.pipeline(transaction=False) as pipe:
                for sk in keys:
                    pipe.hgetall(self.k("stats", sk))
                rows = await pipe.execute()
        return {sk: {_text(f): int(v) for f, v in row.items()} for sk, row in zip(keys, rows, strict=True)}

    async def daily(self, sk: str) -> dict[str, dict[str, int]]:
        """Per-day counters of one "persona|version|variant": {day: {replies, up, down}}."""
        with store_errors("read daily counters"):
            raw = await self.redis.client.hgetall(self.k("daily", sk))
        out: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            day, _, kind = _text(field).partition(":")
            out.setdefault(day, {})[kind] = int(value)
        return dict(sorted(out.items()))

    async def record_failure(self, failure: FailedReply) -> None:
        """One ZSET per persona scored by time, trimmed to the last FAILURES_KEPT and FAILURES_DAYS;
        the "failed" counter of its persona|version|variant goes up too."""
        key = self.k("failures", failure.persona_id)
        sk = stats_key(failure.persona_id, failure.persona_version, failure.variant)
        member = f"{new_reply_id()} {failure.to_json()}"  # unique, so equal failures all count
        with store_errors("note a failed reply"):
            async with self.redis.client.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {member: failure.at})
                pipe.zremrangebyrank(key, 0, -FAILURES_KEPT - 1)
                pipe.zremrangebyscore(key, "-inf", failure.at - FAILURES_DAYS * 86400)
                pipe.expire(key, FAILURES_DAYS * 86400)
                pipe.hincrby(self.k("stats", sk), "failed", 1)
                pipe.sadd(self.k("stats", "index"), sk)
                await pipe.execute()

    async def failures(self, persona_id: str, since: float) -> list[FailedReply]:
        with store_errors("read failed replies"):
            key = self.k("failures", persona_id)
            raw = cast(list[bytes], await self.redis.client.zrangebyscore(key, since, "+inf"))
        return [FailedReply.from_json(_text(item).split(" ", 1)[1]) for item in raw]

    async def recent(self, since: float | str, limit: int) -> AsyncIterator[ReplyRecord]:
        """The newest `limit` reply records created at or after `since` (a timestamp or "-inf"),
        newest first, read in pages from the creation-time index; expired records are skipped."""
        client, index = self.redis.client, self.k("replies")
        offset = 0
        while offset < limit:
            with store_errors("page through reply records"):
                ids = await client.zrevrangebyscore(index, "+inf", since, start=offset, num=min(PAGE, limit - offset))
                if not ids:
                    return
                raws = await client.mget([self.k("reply", _text(cast(bytes | str, i))) for i in ids])
            for raw in raws:
                if raw is not None:
                    yield ReplyRecord.from_json(raw)
            offset += len(ids)

    async def iter_rated(self, persona_id: str | None = None) -> AsyncIterator[RatedReply]:
        index = self.k("persona", persona_id, "rated") if persona_id else self.k("rated")
        start = 0
        while True:
            with store_errors("page through rated replies"):
                page = cast(list[bytes], await self.redis.client.zrange(index, start, start + PAGE - 1))
                ids = [_text(i) for i in page]
                if not ids:
                    return
                async with self.redis.client.pipeline(transaction=False) as pipe:
                    for rid in ids:
                        pipe.get(self.k("reply", rid))
                        pipe.hgetall(self.k("ratings", rid))
                    rows = await pipe.execute()
            for raw, ratings in zip(rows[::2], rows[1::2], strict=True):
                if raw is None or not ratings:
                    continue  # prompt text expired (retention) or every rating was withdrawn
                yield RatedReply(ReplyRecord.from_json(raw), {_text(u): int(v) for u, v in ratings.items()})
            start += PAGE

    async def forget_user(self, user_id: str) -> int:
        """Delete replies to this user (with their ratings and message links) and this user's ratings
        elsewhere; returns how many of each.

        Counters stay: they are anonymous aggregates, and reports must not jump when a user leaves.
        """
        client = self.redis.client
        with store_errors("forget a user's feedback"):
            replies = [_text(r) for r in await client.smembers(self.k("user", user_id, "replies"))]
            rated = [_text(r) for r in await client.smembers(self.k("user", user_id, "rated"))]
            rated = [rid for rid in rated if rid not in set(replies)]
            async with client.pipeline(transaction=False) as pipe:
                for rid in replies:
                    pipe.hget(self.k("reply", rid, "meta"), "persona")
                    pipe.smembers(self.k("reply", rid, "links"))
                found = await pipe.execute()
            personas = [_text(p) if p else "" for p in found[::2]]
            links = [[_text(e) for e in members] for members in found[1::2]]
            async with client.pipeline(transaction=True) as pipe:
                for rid, persona, external in zip(replies, personas, links, strict=True):
                    pipe.delete(
                        self.k("reply", rid),
                        self.k("reply", rid, "links"),
                        self.k("ratings", rid),
                        self.k("ratings", rid, "ctx"),
                        self.k("ratings", rid, "at"),
                        *(self.k("ext", e) for e in external),
                    )
                    pipe.hdel(self.k("reply", rid, "meta"), "user")
                    pipe.zrem(self.k("replies"), rid)
                    pipe.zrem(self.k("rated"), rid)
                    pipe.zrem(self.k("persona", persona, "rated"), rid)
                for rid in rated:
                    pipe.hdel(self.k("ratings", rid), user_id)
                    pipe.hdel(self.k("ratings", rid, "ctx"), user_id)
                    pipe.hdel(self.k("ratings", rid, "at"), user_id)
                pipe.delete(self.k("user", user_id, "replies"), self.k("user", user_id, "rated"))
                await pipe.execute()
        return len(replies) + len(rated)


def _outcome(outcome: str) -> RateOutcome:
    if outcome in ("rated", "withdrawn"):
        return cast(RateOutcome, outcome)
    return "ignored"  # stale, nolink, noreply (of a message), or a removal that was not the rating
