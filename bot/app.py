"""The composition root: the one place that turns `Settings` into concrete stores and backends.

    async with build_runtime(settings) as runtime:
        await runtime.engine.reply(request)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.engine import ChatEngine
from bot.feedback.redis_log import RedisFeedbackLog
from bot.memory.redis_store import RedisMemoryStore
from bot.models.provider import DefaultModelProvider
from bot.personas.registry import FilePersonaRegistry
from bot.personas.watch import PersonaWatcher
from bot.ports import ModelProvider
from bot.redis_conn import EmbeddedRedis, RedisHandle
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
    #: Hot reload of persona files (None when BOT_PERSONAS_RELOAD_S is 0).
    watcher: PersonaWatcher | None = None


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
    personas = FilePersonaRegistry(settings.personas_dir, adapters_root=settings.adapters_dir)
    personas.reload()
    provider = model_provider or DefaultModelProvider(settings.model, settings.data_dir)
    async with connect_redis(settings) as redis:
        # Redis first: an unreachable Redis should fail fast, before a model load.
        if isinstance(provider, DefaultModelProvider):
            if warm_up:
                await provider.warm_up(personas.all())
            for persona_id, reason in (await provider.check_adapters(personas.all())).items():
                personas.disable(persona_id, reason)  # the others keep working
            # Hot reload: changed personas drop their cached prompts; adapters are checked again.
            personas.on_reload(lambda _changes: provider.clear_cache())
            personas.add_validator(provider.check_adapters)
        memory = RedisMemoryStore(redis)
        feedback = RedisFeedbackLog(redis, retention_days=settings.feedback.prompt_retention_days)
        engine = ChatEngine(
            personas, memory, feedback, provider, settings.memory, default_persona=settings.default_persona
        )
        try:
            async with watching(personas, settings.personas_reload_s) as watcher:
                yield Runtime(settings, redis, personas, provider, memory, feedback, engine, watcher)
        finally:
            if model_provider is None and isinstance(provider, DefaultModelProvider):
                provider.close()  # only what this root created; a passed-in provider is the caller's


@asynccontextmanager
async def watching(personas: FilePersonaRegistry, interval: float) -> AsyncIterator[PersonaWatcher | None]:
    """Hot reload while the runtime lives: poll the persona files, and reload on SIGHUP."""
    if interval <= 0:
        yield None
        return
    watcher = PersonaWatcher(personas, interval=interval)
    watcher.start()
    loop = asyncio.get_running_loop()
    hooked = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, watcher.request)  # main thread, POSIX only
        hooked = True
    try:
        yield watcher
    finally:
        if hooked:
            loop.remove_signal_handler(signal.SIGHUP)
        await watcher.stop()
