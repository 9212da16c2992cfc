"""RedisMemoryStore against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.domain.messages import StoredTurn
from bot.memory.redis_store import RedisMemoryStore
from bot.redis_conn import RedisHandle


def pair(i: int, user: str = "u1") -> list[StoredTurn]:
    return [
        StoredTurn("user", f"q{i}", user_id=user, persona_id="p"),
        StoredTurn("assistant", f"a{i}", user_id=user, persona_id="p"),
    ]


async def test_append_and_load_round_trip(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0), max_turns=5, ttl_seconds=60)
    loaded = await store.load("c1", 5)
    assert [(t.role, t.content, t.user_id, t.persona_id) for t in loaded] == [
        ("user", "q0", "u1", "p"),
        ("assistant", "a0", "u1", "p"),
    ]


async def test_list_is_capped_at_max_turns(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    for i in range(6):
        await store.append("c1", pair(i), max_turns=3, ttl_seconds=0)
    assert await redis_handle.client.llen(redis_handle.key("mem", "c1")) == 6
    assert [t.content for t in await store.load("c1", 2)] == ["q4", "a4", "q5", "a5"]


async def test_ttl_is_set_and_zero_means_forever(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0), max_turns=3, ttl_seconds=120)
    await store.append("c2", pair(0), max_turns=3, ttl_seconds=0)
    assert 0 < await redis_handle.client.ttl(redis_handle.key("mem", "c1")) <= 120
    assert await redis_handle.client.ttl(redis_handle.key("mem", "c2")) == -1


async def test_clear_only_touches_one_conversation(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0), max_turns=3, ttl_seconds=0)
    await store.append("c2", pair(1), max_turns=3, ttl_seconds=0)
    await store.clear("c1")
    assert await store.load("c1", 3) == []
    assert len(await store.load("c2", 3)) == 2


async def test_forget_user_removes_only_their_turns_everywhere(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0, "alice") + pair(1, "bob"), max_turns=10, ttl_seconds=300)
    await store.append("c2", pair(2, "alice"), max_turns=10, ttl_seconds=0)
    assert await store.forget_user("alice") == 4
    assert [t.content for t in await store.load("c1", 10)] == ["q1", "a1"]
    assert await store.load("c2", 10) == []
    assert await redis_handle.client.ttl(redis_handle.key("mem", "c1")) > 0
    assert await store.forget_user("alice") == 0


async def test_append_keeps_the_writers_index_and_large_batches(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    turns = [t for i in range(1500) for t in pair(i, user=f"u{i % 3}")]  # over Lua's unpack() slice
    await store.append("c1", turns, max_turns=2000, ttl_seconds=300)
    assert [t.content for t in await store.load("c1", 2000)] == [t.content for t in turns]
    for user in ("u0", "u1", "u2"):
        key = redis_handle.key("user", user, "convs")
        assert await redis_handle.client.smembers(key) == {b"c1"}
        assert 0 < await redis_handle.client.ttl(key) <= 300
    await store.append("c2", pair(0, user=""), max_turns=3, ttl_seconds=0)  # no writer id: no index
    assert await redis_handle.client.exists(redis_handle.key("user", "", "convs")) == 0


async def test_loaded_turns_equal_what_was_stored(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    turns = [
        StoredTurn("user", 'héllo "quoted" ✓', user_id="u1", persona_id="p", at=1.5),
        StoredTurn("assistant", "", user_id="u1", persona_id="p", at=2.0),
    ]
    await store.append("c1", turns, max_turns=5, ttl_seconds=0)
    assert await store.load("c1", 5) == turns
    assert await store.load("c1", 5) == turns  # a second read (decoded from the cache) is equal too


# -- the Redis plumbing under the stores (bot.redis_conn) -----------------------------------------

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_concurrent_script_calls_share_one_round_trip(
    redis_handle: RedisHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    incr, fail = redis_handle.script(INCR), redis_handle.script("return redis.error_reply('NOPE')")
    pipelines = 0
    real = redis_handle.client.pipeline

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(redis_handle.client, "pipeline", counting)
    results = await asyncio.gather(incr(["n"], [2]), fail([], []), incr(["n"], [3]), return_exceptions=True)
    assert pipelines == 1
    assert results[0] == 2 and results[2] == 5
    assert isinstance(results[1], ResponseError) and "NOPE" in str(results[1])  # only its own caller fails
    assert await incr(["n"], [1]) == 6  # a lone call is a plain EVALSHA


async def test_scripts_survive_a_flushed_script_cache(redis_handle: RedisHandle) -> None:
    incr = redis_handle.script(INCR)
    assert await incr(["n"], [1]) == 1
    await redis_handle.client.script_flush()  # as after a Redis restart
    assert await asyncio.gather(incr(["n"], [1]), incr(["n"], [1])) == [2, 3]
    await redis_handle.client.script_flush()
    assert await incr(["n"], [1]) == 4


async def test_a_call_cancelled_before_it_is_sent_is_dropped(redis_handle: RedisHandle) -> None:
    incr = redis_handle.script(INCR)
    task = asyncio.create_task(incr(["n"], [1]))
    await asyncio.sleep(0)  # the call is queued, not yet sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await incr(["n"], [10]) == 10


async def test_write_failures_are_redis_errors_and_drop_the_connection(redis_handle: RedisHandle) -> None:
    pool = redis_handle.client.connection_pool
    conn = await pool.get_connection()
    timeout = conn.socket_timeout
    try:

        async def broken(command: Any) -> None:
            raise OSError(32, "Broken pipe")

        async def stuck(command: Any) -> None:
            await asyncio.sleep(10)

        conn._send_packed_command = broken  # type: ignore[method-assign]
        with pytest.raises(RedisConnectionError, match="Broken pipe"):
            await conn.send_packed_command(b"PING\r\n")
        assert not conn.is_connected
        conn.socket_timeout = 0.05
        conn._send_packed_command = stuck  # type: ignore[method-assign]
        with pytest.raises(RedisTimeoutError, match="Timeout writing to socket"):
            await conn.send_packed_command(b"PING\r\n")
        assert not conn.is_connected
    finally:
        del conn._send_packed_command
        conn.socket_timeout = timeout
        await pool.release(conn)
    assert await redis_handle.client.ping()  # the pool reconnects


async def test_forgetting_also_drops_decoded_turns_from_process_memory(redis_handle: RedisHandle) -> None:
    from bot.memory.redis_store import _decode_turn

    store = RedisMemoryStore(redis_handle)
    await store.append("c", pair(0, "secret-keeper"), max_turns=10, ttl_seconds=60)
    await store.load("c", 10)
    assert _decode_turn.cache_info().currsize > 0
    await store.forget_user("secret-keeper")
    assert _decode_turn.cache_info().currsize == 0
    await store.append("d", pair(1), max_turns=10, ttl_seconds=60)
    await store.load("d", 10)
    await store.clear("d")
    assert _decode_turn.cache_info().currsize == 0


async def test_appending_a_replys_turns_twice_stores_them_once(redis_handle: RedisHandle) -> None:
    # A write that timed out may have been applied before the journal replays it.
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0), max_turns=5, ttl_seconds=60, reply_id="r0")
    await store.append("c1", pair(1), max_turns=5, ttl_seconds=60, reply_id="r1")
    await store.append("c1", pair(0), max_turns=5, ttl_seconds=60, reply_id="r0")
    assert [t.content for t in await store.load("c1", 5)] == ["q0", "a0", "q1", "a1"]
    assert 0 < await redis_handle.client.ttl(redis_handle.key("memdone", "c1")) <= 60
    await store.clear("c1")
    assert await redis_handle.client.exists(redis_handle.key("memdone", "c1")) == 0
    await store.append("c1", pair(0), max_turns=5, ttl_seconds=60, reply_id="r0")
    assert [t.content for t in await store.load("c1", 5)] == ["q0", "a0"], "after /forget it is a new turn"
