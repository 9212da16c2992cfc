"""The composition root: the one place that turns `Settings` into concrete stores and backends.

    async with build_runtime(settings) as runtime:
        await runtime.engine.reply(request)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.coordination.claims import FallbackClaims, RedisClaims
from bot.coordination.health import RedisHealth
from bot.coordination.pacing import FallbackPacing, RedisPacing
from bot.coordination.placements import CachedPlacements, RedisPlacements
from bot.coordination.slots import FallbackSlots, RedisSlots
from bot.engine import ChatEngine
from bot.feedback.redis_log import RedisFeedbackLog
from bot.memory.redis_store import RedisMemoryStore
from bot.models.provider import DefaultModelProvider
from bot.personas.registry import FilePersonaRegistry
from bot.ports import DiscordState, ModelProvider
from bot.redis_conn import EmbeddedRedis, RedisHandle
from bot.refine.redis_store import RedisRefineStore
from bot.refine.watcher import refine_watcher
from bot.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    redis: RedisHandle
    personas: FilePersonaRegistry
    models: ModelProvider
    memory: RedisMemoryStore
    feedback: RedisFeedbackLog
    engine: ChatEngine
    refine: RedisRefineStore  # running canaries and the refine journal (shown by /feedback)


def redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    if settings.redis.url is not None:
        return settings.redis.url.get_secret_value(), None
    embedded = EmbeddedRedis(settings.data_dir / "redis")
    return embedded.start(), embedded


@asynccontextmanager
async def connect_redis(settings: Settings) -> AsyncIterator[RedisHandle]:
    """Connect to the configured Redis, or start (and later stop) the embedded one."""
    url, embedded = redis_url(settings)
    try:
        handle = await RedisHandle.connect(url, settings.redis)
        try:
            yield handle
        finally:
            await handle.aclose()
    finally:
        if embedded is not None:
            embedded.stop()


@asynccontextmanager
async def build_runtime(
    settings: Settings, *, model_provider: ModelProvider | None = None, warm_up: bool = True
) -> AsyncIterator[Runtime]:
    personas = FilePersonaRegistry(settings.personas_dir)
    personas.reload()
    provider = model_provider or DefaultModelProvider(settings.model, settings.data_dir)
    async with connect_redis(settings) as redis:
        # Redis first: an unreachable Redis should fail fast, before a model load.
        if isinstance(provider, DefaultModelProvider):
            personas.on_reload(provider.clear_cache)
            if warm_up:
                await provider.warm_up(personas.all())
            for persona_id, reason in (await provider.check_adapters(personas.all())).items():
                personas.disable(persona_id, reason)  # the others keep working
        memory = RedisMemoryStore(redis)
        feedback = RedisFeedbackLog(redis, retention_days=settings.feedback.prompt_retention_days)
        engine = ChatEngine(
            personas, memory, feedback, provider, settings.memory, default_persona=settings.default_persona
        )
        # Refine's automatic decisions on running canaries (a supervised periodic task; bot.refine.watcher).
        watcher = refine_watcher(settings.refine, redis, feedback, personas, settings.data_dir,
                                 on_written=personas.reload)
        try:
            async with watcher:
                yield Runtime(settings, redis, personas, provider, memory, feedback, engine, RedisRefineStore(redis))
        finally:
            if model_provider is None and isinstance(provider, DefaultModelProvider):
                provider.close()  # only what this root created; a passed-in provider is the caller's


def build_discord_state(runtime: Runtime) -> DiscordState:
    """The Discord transport's shared state: in Redis for every bot process, with this process's
    own as the fallback while Redis does not answer within `state_timeout_s` (bot.coordination)."""
    settings, redis = runtime.settings.discord, runtime.redis
    health = RedisHealth(settings.state_timeout_s)
    slots = RedisSlots(redis, total=settings.max_replies, per_group=settings.max_replies_per_server)
    return DiscordState(
        claims=FallbackClaims(RedisClaims(redis), health),
        pacing=FallbackPacing(RedisPacing(redis, settings.user_cooldown_s), health),
        slots=FallbackSlots(slots, health),
        placements=CachedPlacements(RedisPlacements(redis), health),
    )
