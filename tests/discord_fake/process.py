"""Real bot processes (`python -m bot discord`) pointed at a FakeDiscord, as an operator runs them.

    env = bot_env(fake, redis_url=..., model_url=..., personas_dir=..., data_dir=..., shard_ids=[0], shard_count=2)
    async with running_bots([env, other_env], logs_dir) as bots: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from .server import FakeDiscord

REPO = Path(__file__).resolve().parents[2]


def bot_env(
    fake: FakeDiscord, *, redis_url: str, model_url: str, personas_dir: Path, data_dir: Path, **discord: Any
) -> dict[str, str]:
    """The environment of one bot process: the fake's endpoints, Redis, an OpenAI-compatible model,
    and `discord` settings (BOT_DISCORD__<NAME>, lists as JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update({
        "PYTHONPATH": str(REPO),
        "BOT_LOG_LEVEL": "INFO",
        "BOT_DATA_DIR": str(data_dir),
        "BOT_PERSONAS_DIR": str(personas_dir),
        "BOT_REDIS__URL": redis_url,
        "BOT_REDIS__KEY_PREFIX": "test",
        "BOT_MODEL__BACKEND": "openai",
        "BOT_MODEL__OPENAI_BASE_URL": model_url,
        "BOT_DISCORD__TOKEN": fake.token,
        "BOT_DISCORD__API_BASE": fake.api_base,
        "BOT_DISCORD__GATEWAY_URL": fake.gateway_url,
        "BOT_DISCORD__SYNC_COMMANDS": "false",
    })  # fmt: skip
    for name, value in discord.items():
        env[f"BOT_DISCORD__{name.upper()}"] = json.dumps(value) if isinstance(value, list | bool) else str(value)
    return env


class BotProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "discord", env=self.env, cwd=self.log_path.parent,
            stdout=self._log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async def stop(self, grace_s: float = 20.0) -> int | None:
        """Interrupt (Ctrl-C), then kill if it does not end in `grace_s`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._log is not None:
            self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.asynccontextmanager
async def running_bots(envs: list[dict[str, str]], logs_dir: Path) -> AsyncIterator[list[BotProcess]]:
    bots = [BotProcess(env, logs_dir / f"bot-{i}.log") for i, env in enumerate(envs)]
    try:
        for bot in bots:
            await bot.start()
        yield bots
    finally:
        await asyncio.gather(*(bot.stop() for bot in bots))
