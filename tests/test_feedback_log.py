"""RedisFeedbackLog against a real redis-server: records, ratings, counters, paging, forget-me."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bot.domain.feedback import Rating, ReplyRecord, new_reply_id
from bot.domain.ratings import MessageRating
from bot.errors import ReplyNotFound
from bot.feedback.redis_log import RedisFeedbackLog, stats_key
from bot.redis_conn import RedisHandle


def record(
    user: str = "u1",
    persona: str = "p",
    variant: str = "default",
    created: float = 1_700_000_000.0,
    reply: str = "hello",
) -> ReplyRecord:
    return ReplyRecord(
        reply_id=new_reply_id(),
        conversation_id="c",
        user_id=user,
        persona_id=persona,
        persona_version="1",
        model="m",
        backend="scripted",
        adapter=None,
        generation={"temperature": 0.0},
        prompt_messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        reply=reply,
        latency_s=0.1,
        first_token_s=0.05,
        prompt_tokens=3,
        completion_tokens=1,
        system_prompt_hash="abc",
        variant=variant,
        created_at=created,
    )


async def test_record_round_trip(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    assert await log.get(r.reply_id) == r
    assert await log.get("missing") is None
    assert (await log.stats())[stats_key("p", "1", "default")]["replies"] == 1


async def test_one_rating_per_user_latest_wins_and_counters_follow(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    sk = stats_key("p", "1", "default")
    await log.rate(Rating(r.reply_id, "alice", 1))
    await log.rate(Rating(r.reply_id, "alice", 1))
    await log.rate(Rating(r.reply_id, "bob", -1))
    assert await log.ratings(r.reply_id) == {"alice": 1, "bob": -1}
    assert (await log.stats())[sk] == {"replies": 1, "up": 1, "down": 1}
    await log.rate(Rating(r.reply_id, "alice", -1))
    assert (await log.stats())[sk] == {"replies": 1, "up": 0, "down": 2}
    await log.rate(Rating(r.reply_id, "bob", 0))
    assert await log.ratings(r.reply_id) == {"alice": -1}
    assert (await log.stats())[sk] == {"replies": 1, "up": 0, "down": 1}
    assert (await log.daily(sk)) == {"2023-11-14": {"replies": 1, "up": 0, "down": 1}}


async def test_concurrent_ratings_keep_counters_exact(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    votes = [Rating(r.reply_id, f"user{i % 10}", 1 if i % 3 else -1) for i in range(60)]
    await asyncio.gather(*(log.rate(v) for v in votes))
    final = await log.ratings(r.reply_id)
    counters = (await log.stats())[stats_key("p", "1", "default")]
    assert counters["up"] == sum(1 for v in final.values() if v == 1)
    assert counters["down"] == sum(1 for v in final.values() if v == -1)


async def test_rating_context_is_kept(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    await log.rate(Rating(r.reply_id, "discord:7", 1, context={"message_id": "55", "guild_id": "9"}))
    ctx = (await log.rating_contexts(r.reply_id))["discord:7"]
    assert ctx["message_id"] == "55" and ctx["guild_id"] == "9" and "at" in ctx


async def test_rating_an_unknown_reply_is_an_error(redis_handle: RedisHandle) -> None:
    with pytest.raises(ReplyNotFound):
        await RedisFeedbackLog(redis_handle).rate(Rating("nope", "alice", 1))


async def test_iter_rated_pages_in_time_order_and_filters_persona(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    records = [record(persona="p" if i % 2 else "q", created=1_700_000_000.0 + i) for i in range(450)]
    for r in records:
        await log.record(r)
    for r in records[::3]:
        await log.rate(Rating(r.reply_id, "alice", 1))
    everything = [x.record.reply_id async for x in log.iter_rated()]
    assert everything == [r.reply_id for r in records[::3]]
    only_p = [x.record.persona_id async for x in log.iter_rated("p")]
    assert only_p and set(only_p) == {"p"}


async def test_link_and_resolve(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    await log.link("discord:msg:1", "r1")
    assert await log.resolve("discord:msg:1") == "r1"
    assert await log.resolve("discord:msg:2") is None


async def test_retention_expires_prompt_text_but_keeps_counts(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle, retention_days=30)
    r = record()
    await log.record(r)
    ttl = await redis_handle.client.ttl(redis_handle.key("reply", r.reply_id))
    assert 29 * 86400 < ttl <= 30 * 86400
    assert await redis_handle.client.ttl(redis_handle.key("stats", stats_key("p", "1", "default"))) == -1


async def test_forget_user_removes_their_replies_and_ratings(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    mine, theirs = record(user="alice"), record(user="bob")
    await log.record(mine)
    await log.record(theirs)
    await log.rate(Rating(mine.reply_id, "alice", 1))
    await log.rate(Rating(theirs.reply_id, "alice", -1))
    await log.rate(Rating(theirs.reply_id, "bob", 1))
    assert await log.forget_user("alice") == 2
    assert await log.get(mine.reply_id) is None
    assert await log.ratings(theirs.reply_id) == {"bob": 1}
    rated = [x async for x in log.iter_rated()]
    assert [x.record.reply_id for x in rated] == [theirs.reply_id]
    assert all("alice" not in x.ratings for x in rated)


async def test_record_writes_every_index_a_transaction_used_to(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = replace(record(user="alice", variant="short"), participants=["alice", "bob"])
    await log.record(r)
    client, k = redis_handle.client, redis_handle.key
    sk = stats_key("p", "1", "short")
    assert await client.hgetall(k("reply", r.reply_id, "meta")) == {
        b"persona": b"p",
        b"version": b"1",
        b"variant": b"short",
        b"user": b"alice",
        b"created": repr(r.created_at).encode(),
        b"day": b"2023-11-14",
        b"sk": sk.encode(),
    }
    assert await client.zscore(k("replies"), r.reply_id) == r.created_at
    assert await client.hgetall(k("daily", sk)) == {b"2023-11-14:replies": b"1"}
    assert await client.smembers(k("stats", "index")) == {sk.encode()}
    for user in ("alice", "bob"):
        assert await client.smembers(k("user", user, "replies")) == {r.reply_id.encode()}
    assert await client.ttl(k("reply", r.reply_id)) == -1  # no retention: kept
    await log.record(record(user="alice", variant="short"))
    assert (await log.stats())[sk]["replies"] == 2


# -- idempotency: a journal may replay writes the store already took ------------------------------


async def test_recording_a_reply_twice_counts_it_once(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    await log.record(r)
    assert (await log.stats())[stats_key("p", "1", "default")]["replies"] == 1
    assert await redis_handle.client.zcard(redis_handle.key("replies")) == 1
    assert await log.daily(stats_key("p", "1", "default")) == {"2023-11-14": {"replies": 1}}


async def test_the_latest_rating_event_wins_whatever_the_order_of_arrival(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    await log.record(r)
    sk = stats_key("p", "1", "default")
    assert await log.rate(Rating(r.reply_id, "alice", -1, at=20.0)) == "rated"
    assert await log.rate(Rating(r.reply_id, "alice", 1, at=10.0)) == "ignored", "older than the stored event"
    assert await log.ratings(r.reply_id) == {"alice": -1}
    assert await log.rate(Rating(r.reply_id, "alice", -1, at=20.0)) == "rated"  # the same event replayed
    assert (await log.stats())[sk] == {"replies": 1, "down": 1}
    assert await log.rate(Rating(r.reply_id, "alice", 0, at=30.0)) == "withdrawn"
    # A withdrawal is an event too: an older rating replayed after it does not come back.
    assert await log.rate(Rating(r.reply_id, "alice", 1, at=25.0)) == "ignored"
    assert await log.ratings(r.reply_id) == {}
    assert (await log.stats())[sk] == {"replies": 1, "down": 0}, "the stale 👍 never counted"


async def test_a_message_rating_is_resolved_and_judged_when_applied(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle)
    r = record()
    assert await log.rate_message(MessageRating("discord:msg:1", "alice", 1, at=1.0)) == "ignored", "no such message"
    await log.record(r)
    await log.link("discord:msg:1", r.reply_id)
    await log.link("discord:msg:2", r.reply_id)  # a reply split over two messages
    assert await log.rate_message(MessageRating("discord:msg:1", "alice", 1, at=2.0)) == "rated"
    assert await log.rate_message(MessageRating("discord:msg:2", "alice", -1, at=3.0)) == "rated"
    # Removing 👍 while the rating is 👎 changes nothing; removing 👎 withdraws it.
    assert await log.rate_message(MessageRating("discord:msg:1", "alice", 1, removed=True, at=4.0)) == "ignored"
    assert await log.ratings(r.reply_id) == {"alice": -1}
    assert await log.rate_message(MessageRating("discord:msg:2", "alice", -1, removed=True, at=5.0)) == "withdrawn"
    assert await log.ratings(r.reply_id) == {}
    assert (await log.stats())[stats_key("p", "1", "default")] == {"replies": 1, "up": 0, "down": 0}


async def test_links_expire_with_their_record_and_go_with_forget_me(redis_handle: RedisHandle) -> None:
    log = RedisFeedbackLog(redis_handle, retention_days=30)
    client, k = redis_handle.client, redis_handle.key
    mine = record(user="alice")
    await log.link("discord:msg:7", mine.reply_id)  # the record may arrive later (replayed from a journal)
    assert 29 * 86400 < await client.ttl(k("ext", "discord:msg:7")) <= 30 * 86400
    await log.record(mine)
    await client.expire(k("reply", mine.reply_id), 1000)
    await log.link("discord:msg:8", mine.reply_id)
    assert 990 < await client.ttl(k("ext", "discord:msg:8")) <= 1000, "the link lives as long as the record"
    await log.rate_message(MessageRating("discord:msg:8", "bob", 1))
    await log.forget_user("alice")
    assert await log.resolve("discord:msg:7") is None and await log.resolve("discord:msg:8") is None
    await log.link("discord:msg:9", mine.reply_id)  # a late (journaled) link of a forgotten reply
    assert await log.resolve("discord:msg:9") is None
    assert await client.exists(k("ratings", mine.reply_id, "at")) == 0
