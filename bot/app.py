"""The composition root: the one place that turns `Settings` into concrete stores and backends.

    async with build_runtime(settings) as runtime:
        await runtime.engine.reply(request)

Background tasks started here, each supervised (they log a failure and carry on, never die of one):
the journal replayer (from start-up, so an earlier run's journal is replayed too) and, for the
embedded Redis, a watchdog that restarts a server that died, on the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.coordination.claims import FallbackClaims, RedisClaims
from bot.coordination.health import RedisHealth
from bot.coordination.pacing import FallbackPacing, RedisPacing
from bot.coordination.placements import CachedPlacements, RedisPlacements
from bot.coordination.slots import FallbackSlots, RedisSlots
from bot.engine import ChatEngine
from bot.feedback.redis_log import RedisFeedbackLog
from bot.journal import JournaledStores, Replayer, SqliteJournal
from bot.memory.redis_store import RedisMemoryStore
from bot.models.provider import DefaultModelProvider
from bot.personas.registry import FilePersonaRegistry
from bot.personas.watch import PersonaWatcher
from bot.ports import DiscordState, ModelProvider
from bot.private_files import private_dir
from bot.redis_conn import EmbeddedRedis, PersistenceRewriter, RedisHandle
from bot.refine.redis_store import RedisRefineStore
from bot.refine.watcher import refine_watcher
from bot.settings import Settings
from bot.tasks import alongside

log = logging.getLogger(__name__)

#: On a normal exit, how long the replayer may keep draining the journal into a Redis that answers.
FINAL_DRAIN_S = 5.0


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
    journal: SqliteJournal | None = None
    replayer: Replayer | None = None
    embedded: EmbeddedRedis | None = None
    #: Hot reload of persona files (None when BOT_PERSONAS_RELOAD_S is 0).
    watcher: PersonaWatcher | None = None


def embedded_redis(settings: Settings) -> EmbeddedRedis | None:
    """The embedded server for these settings, or None when a Redis URL is configured."""
    if settings.redis.url is not None:
        return None
    private_dir(settings.data_dir)
    return EmbeddedRedis(settings.data_dir / "redis")


def journal_path(settings: Settings) -> Path:
    """One journal per key prefix: two bots sharing a data directory never replay each other's writes."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", settings.redis.key_prefix) or "bot"
    return settings.data_dir / "journal" / f"{name}.sqlite3"


@dataclass
class Stores:
    """The Redis-backed stores, built one way for the running bot and the offline commands (feedback
    report and export, refine, train --from-feedback), which open them with `open_stores`."""

    redis: RedisHandle
    feedback: RedisFeedbackLog
    refine: RedisRefineStore

    @classmethod
    def on(cls, redis: RedisHandle, settings: Settings) -> Stores:
        feedback = RedisFeedbackLog(redis, retention_days=settings.feedback.prompt_retention_days)
        return cls(redis, feedback, RedisRefineStore(redis))


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """The stores, for a command that needs no model and no chat engine."""
    async with connect_redis(settings) as redis:
        yield Stores.on(redis, settings)


@asynccontextmanager
async def connect_redis(settings: Settings, *, watch: bool = False) -> AsyncIterator[RedisHandle]:
    """Connect to the configured Redis, or use the embedded one (started if none runs; stopped on
    exit only when no other process uses it). `watch`: restart the embedded server if it dies."""
    async with _redis(settings, watch=watch) as (handle, _):
        yield handle


@asynccontextmanager
async def _redis(settings: Settings, *, watch: bool) -> AsyncIterator[tuple[RedisHandle, EmbeddedRedis | None]]:
    embedded = embedded_redis(settings)
    if embedded is None:
        assert settings.redis.url is not None
        url = settings.redis.url.get_secret_value()
    else:
        url = await asyncio.to_thread(embedded.start)
    try:
        handle = await RedisHandle.connect(url, settings.redis)
        try:
            async with alongside(embedded.watch() if embedded is not None and watch else None):
                yield handle, embedded
        finally:
            await handle.aclose()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.release)


@asynccontextmanager
async def build_runtime(
    settings: Settings, *, model_provider: ModelProvider | None = None, warm_up: bool = True
) -> AsyncIterator[Runtime]:
    personas = FilePersonaRegistry(settings.personas_dir, adapters_root=settings.adapters_dir)
    personas.reload()
    provider = model_provider or DefaultModelProvider(settings.model, settings.data_dir,
                                                      adapters_dir=settings.adapters_dir)
    async with _redis(settings, watch=True) as (redis, embedded):
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
        shared = Stores.on(redis, settings)
        feedback = shared.feedback
        private_dir(settings.data_dir)
        journal = await SqliteJournal.open(journal_path(settings), max_bytes=settings.journal.max_mb * 2**20)
        rewriter = PersistenceRewriter(
            redis,
            timeout=settings.redis.forget_rewrite_timeout_s,
            rdb_file=None if embedded is None else embedded.directory / "bot.rdb",
        )
        stores = JournaledStores(memory, feedback, journal, rewrite_disk=rewriter)
        replayer = Replayer(stores, journal, redis.server_id, retry_max_s=settings.journal.retry_max_s)
        engine = ChatEngine(
            personas, memory, feedback, provider, settings.memory, default_persona=settings.default_persona,
            stores=stores,
        )  # fmt: skip
        # Refine's automatic decisions on running canaries (a supervised periodic task; bot.refine.watcher).
        canaries = refine_watcher(settings.refine, shared.refine, feedback, personas, settings.data_dir,
                                  on_written=personas.reload)
        try:
            async with (
                alongside(replayer.run()),
                canaries,
                watching(personas, settings.personas_reload_s) as watcher,
            ):
                yield Runtime(
                    settings, redis, personas, provider, memory, feedback, engine, shared.refine,
                    journal, replayer, embedded, watcher,
                )  # fmt: skip
                if stores.redis_up and journal.pending:  # leave as little as possible for the next start
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FINAL_DRAIN_S):
                            await replayer.settled()
        finally:
            await journal.close()
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
