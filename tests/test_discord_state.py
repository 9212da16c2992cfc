"""The Discord transport's shared state against real redis-servers: message claims, user pacing,
reply slots and placements, and their fallback when Redis stalls (SIGSTOP) or is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.coordination.claims import FallbackClaims, LocalClaims, RedisClaims
from bot.coordination.health import RedisHealth
from bot.coordination.pacing import FallbackPacing, LocalPacing, RedisPacing
from bot.coordination.placements import CachedPlacements, RedisPlacements
from bot.coordination.slots import FallbackSlots, LocalSlots, RedisSlots
from bot.errors import StoreError
from bot.ports import ReplySlots, SlotsFull, UserPacing
from bot.redis_conn import EmbeddedRedis, RedisHandle
from bot.settings import RedisSettings
from tests.conftest import free_port
from tests.discord_fake.redis_relay import RedisRelay


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, to stop, resume and kill."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    resume(server)
    server.stop()


def pause(server: EmbeddedRedis) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume(server: EmbeddedRedis) -> None:
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def handle_on(url: str, **settings: float) -> AsyncIterator[RedisHandle]:
    handle = await RedisHandle.connect(url, RedisSettings(key_prefix="test", **settings))  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        await handle.aclose()


# -- claims -----------------------------------------------------------------------------------------


async def test_a_message_is_claimed_once_across_processes(redis_handle: RedisHandle) -> None:
    one, other = RedisClaims(redis_handle), RedisClaims(redis_handle)
    assert await one.claim("42") is True
    assert await one.claim("42") is False, "a redelivery"
    assert await other.claim("42") is False, "the claim lives in Redis, not in the process"
    assert await other.claim("43") is True


@contextlib.asynccontextmanager
async def retrying_handle(url: str) -> AsyncIterator[RedisHandle]:
    """A client that re-sends a command after a timeout, as redis-py does when configured to retry on
    TimeoutError (the bot's own pool no longer does, but a retry after a dropped connection is alike)."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    errors = (RedisConnectionError, RedisTimeoutError)
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2, supported_errors=errors)
    pool = aioredis.ConnectionPool.from_url(url, socket_timeout=1.0, retry=retry, retry_on_error=list(errors))
    handle = RedisHandle(aioredis.Redis.from_pool(pool), url, "test")
    try:
        yield handle
    finally:
        await handle.aclose()


async def test_a_claim_retried_by_redis_py_after_a_stall_recognises_its_own_attempt(own_redis: EmbeddedRedis) -> None:
    """The bug behind a dropped message: after a timeout, redis-py re-sends the command on a new
    connection, and Redis, resumed, runs both; the retry must find the token its first try wrote."""
    relay = RedisRelay(own_redis.port or 0)
    await relay.start()
    needle = b"4242424242"
    try:
        async with retrying_handle(relay.url) as handle:
            claims = RedisClaims(handle)
            assert await claims.claim("1") is True  # the script is loaded before the stall
            pause(own_redis)
            claiming = asyncio.create_task(claims.claim(needle.decode()))
            await relay.wait_until(lambda: relay.connections_sending(needle) == 1)
            sent_on = len(relay.sent)
            await relay.wait_until(lambda: len(relay.sent) > sent_on)  # the first try timed out: a retry connects
            resume(own_redis)
            assert await asyncio.wait_for(claiming, 10) is True
            assert relay.connections_sending(needle) == 2, "the command went to Redis twice"
            assert await claims.claim(needle.decode()) is False, "a new attempt is a redelivery"
    finally:
        resume(own_redis)
        await relay.close()


async def test_claims_fall_back_to_this_process_while_redis_stalls(own_redis: EmbeddedRedis) -> None:
    async with handle_on(own_redis.url) as handle:
        claims = FallbackClaims(RedisClaims(handle), RedisHealth(timeout_s=0.3))
        assert await claims.claim("1") is True
        pause(own_redis)
        try:
            assert await claims.claim("2") is True, "answered, although Redis does not answer"
            assert await claims.claim("2") is False, "a redelivery to this process is still caught"
            assert await claims.claim("1") is False
        finally:
            resume(own_redis)
        assert await LocalClaims(capacity=1).claim("x") is True


# -- pacing (cooldowns) --------------------------------------------------------------------------


@pytest.fixture(params=["redis", "local"])
def pacing(request: pytest.FixtureRequest, redis_handle: RedisHandle) -> UserPacing:
    return RedisPacing(redis_handle, 2.0) if request.param == "redis" else LocalPacing(2.0)


async def test_pacing_is_judged_by_when_messages_were_sent(pacing: UserPacing) -> None:
    sent = 1_700_000_000.0
    assert await pacing.reserve("ann", sent) == sent
    assert await pacing.reserve("ann", sent + 4.0) == sent + 4.0, "sent 4 s later: no cooldown, however late it arrives"
    assert await pacing.reserve("ann", sent + 4.5) == sent + 6.0, "sent too soon: it waits until 2 s after the last"
    assert await pacing.reserve("ann", sent + 4.6) == sent + 8.0, "and the next one 2 s after that"
    assert await pacing.reserve("bob", sent + 4.6) == sent + 4.6, "per user"


async def test_pacing_is_shared_and_can_be_switched_off(redis_handle: RedisHandle) -> None:
    now = time.time()
    assert await RedisPacing(redis_handle, 10.0).reserve("ann", now) == pytest.approx(now, abs=0.001)
    assert await RedisPacing(redis_handle, 10.0).reserve("ann", now + 1) == pytest.approx(now + 10, abs=0.001)
    assert await RedisPacing(redis_handle, 0.0).reserve("ann", now + 1) == now + 1
    assert await redis_handle.client.pttl("test:discord:pace:ann") > 15_000, "kept for as long as it matters"


async def test_pacing_falls_back_to_this_process(own_redis: EmbeddedRedis) -> None:
    async with handle_on(own_redis.url) as handle:
        pacing = FallbackPacing(RedisPacing(handle, 2.0), RedisHealth(timeout_s=0.3))
        own_redis.stop()
        assert await pacing.reserve("ann", 100.0) == 100.0
        assert await pacing.reserve("ann", 101.0) == 102.0


# -- reply slots ----------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "local"])
def make_slots(request: pytest.FixtureRequest, redis_handle: RedisHandle) -> object:
    def make(total: int, per_group: int) -> ReplySlots:
        if request.param == "redis":
            return RedisSlots(redis_handle, total=total, per_group=per_group)
        return LocalSlots(total=total, per_group=per_group)

    return make


async def test_slots_limit_each_group_and_the_total(make_slots: object) -> None:
    slots: ReplySlots = make_slots(3, 2)  # type: ignore[operator]
    a, b = await slots.acquire("s1"), await slots.acquire("s1")
    assert isinstance(a, str) and isinstance(b, str)
    assert await slots.acquire("s1") is SlotsFull.GROUP
    c = await slots.acquire(None)
    assert isinstance(c, str)
    assert await slots.acquire("s2") is SlotsFull.TOTAL
    await slots.release(a)
    d = await slots.acquire("s1")
    assert isinstance(d, str)
    await slots.renew(d)
    for token in (b, c, d):
        await slots.release(token)
    assert isinstance(await slots.acquire("s2"), str)


async def test_slots_are_shared_by_processes_and_a_crashed_ones_expire(redis_handle: RedisHandle) -> None:
    crashed = RedisSlots(redis_handle, total=1, per_group=1, ttl_s=0.3)
    alive = RedisSlots(redis_handle, total=1, per_group=1)
    assert isinstance(await crashed.acquire("s"), str)  # ... and its process dies without releasing
    assert await alive.acquire(None) is SlotsFull.TOTAL
    assert await alive.held() == 1
    async with asyncio.timeout(10):
        while not isinstance(token := await alive.acquire("s"), str):  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.05)  # the lease runs out after 0.3 s
    assert await alive.held() == 1 and await alive.held("s") == 1
    await alive.release(token)
    assert await alive.held() == 0


async def test_slots_fall_back_to_this_process_while_redis_stalls(own_redis: EmbeddedRedis) -> None:
    async with handle_on(own_redis.url) as handle:
        redis_slots = RedisSlots(handle, total=2, per_group=1)
        slots = FallbackSlots(redis_slots, RedisHealth(timeout_s=0.3))
        shared = await slots.acquire("s")
        assert isinstance(shared, str) and await redis_slots.held() == 1
        pause(own_redis)
        try:
            local = await slots.acquire("s")
            assert isinstance(local, str), "this process's own limits, started empty"
            assert await slots.acquire("s") is SlotsFull.GROUP
            await slots.renew(shared)  # within the deadline, quietly
            await slots.release(local)
            assert isinstance(await slots.acquire("s"), str)
        finally:
            resume(own_redis)
        await slots.release(shared)
        assert await redis_slots.held() == 0


# -- placements -----------------------------------------------------------------------------------


async def test_placements_are_read_from_the_last_known_choices_while_redis_stalls(own_redis: EmbeddedRedis) -> None:
    async with handle_on(own_redis.url) as handle:
        placements = CachedPlacements(RedisPlacements(handle), RedisHealth(timeout_s=0.3))
        chain = [("thread", 3), ("channel", 2), ("server", 1)]
        await placements.choose(("channel", 2), "captain")
        assert await placements.lookup(chain) == ("captain", ("channel", 2))
        pause(own_redis)
        try:
            assert await placements.lookup(chain) == ("captain", ("channel", 2))
            assert await placements.lookup([("channel", 9)]) is None, "never read: the default persona"
            with pytest.raises(StoreError):
                await placements.choose(("channel", 2), "terse")
        finally:
            resume(own_redis)
        assert await placements.clear(("channel", 2)) is True
        assert await placements.lookup(chain) is None
