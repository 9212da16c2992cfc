"""RedisMemoryStore against a real redis-server."""

from __future__ import annotations

from bot.domain.messages import StoredTurn
from bot.memory.redis_store import RedisMemoryStore
from bot.redis_conn import RedisHandle


def pair(i: int, user: str = "u1") -> list[StoredTurn]:
    return [StoredTurn("user", f"q{i}", user_id=user, persona_id="p"),
            StoredTurn("assistant", f"a{i}", user_id=user, persona_id="p")]


async def test_append_and_load_round_trip(redis_handle: RedisHandle) -> None:
    store = RedisMemoryStore(redis_handle)
    await store.append("c1", pair(0), max_turns=5, ttl_seconds=60)
    loaded = await store.load("c1", 5)
    assert [(t.role, t.content, t.user_id, t.persona_id) for t in loaded] == [
        ("user", "q0", "u1", "p"), ("assistant", "a0", "u1", "p")]


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
