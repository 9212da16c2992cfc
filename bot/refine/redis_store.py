"""The refine store in Redis: the running experiment, the journal, the history (bot.refine.store).

Shared by the CLI (`refine ...`, cron) and the running bot (the watcher, `/feedback`), so it lives
in Redis next to the feedback log. Keys (prefix `bot`):

    bot:refine:<pid>:experiment   STRING  the running experiment (JSON); absent when none
    bot:refine:<pid>:journal      LIST    journal entries (JSON), oldest first, the newest 1000 kept
    bot:refine:<pid>:history      LIST    earlier candidates and scores (JSON) for the proposers
    bot:refine:<pid>:lock         STRING  a short lock: one process acts on an experiment at a time
    bot:refine:index              SET     personas with refinement activity
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.redis_conn import RedisHandle, store_errors
from bot.refine.errors import ExperimentError
from bot.refine.experiments import Experiment
from bot.refine.proposers import Attempt
from bot.refine.store import JournalEntry

JOURNAL_KEEP = 1000
HISTORY_KEEP = 200

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisRefineStore:
    def __init__(self, redis: RedisHandle) -> None:
        self.redis = redis
        self._release = redis.client.register_script(_RELEASE)

    def k(self, persona_id: str, what: str) -> str:
        return self.redis.key("refine", persona_id, what)

    async def experiment(self, persona_id: str) -> Experiment | None:
        with store_errors("read the refine experiment"):
            raw = await self.redis.client.get(self.k(persona_id, "experiment"))
        return None if raw is None else Experiment.from_dict(json.loads(raw))

    async def save_experiment(self, experiment: Experiment) -> None:
        with store_errors("save the refine experiment"):
            async with self.redis.client.pipeline(transaction=True) as pipe:
                pipe.set(self.k(experiment.persona_id, "experiment"), json.dumps(experiment.to_dict(), default=str))
                pipe.sadd(self.redis.key("refine", "index"), experiment.persona_id)
                await pipe.execute()

    async def end_experiment(self, persona_id: str) -> None:
        with store_errors("end the refine experiment"):
            await self.redis.client.delete(self.k(persona_id, "experiment"))

    async def personas(self) -> list[str]:
        with store_errors("list refined personas"):
            return sorted(_text(p) for p in await self.redis.client.smembers(self.redis.key("refine", "index")))

    async def running(self) -> list[Experiment]:
        found = []
        for pid in await self.personas():
            experiment = await self.experiment(pid)
            if experiment is not None:
                found.append(experiment)
        return found

    async def journal(self, entry: JournalEntry) -> None:
        key = self.k(entry.persona_id, "journal")
        with store_errors("write the refine journal"):
            async with self.redis.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, entry.to_json())
                pipe.ltrim(key, -JOURNAL_KEEP, -1)
                pipe.sadd(self.redis.key("refine", "index"), entry.persona_id)
                await pipe.execute()

    async def entries(self, persona_id: str, limit: int = 20) -> list[JournalEntry]:
        with store_errors("read the refine journal"):
            raw = await self.redis.client.lrange(self.k(persona_id, "journal"), -limit, -1)
        return [JournalEntry.from_json(r) for r in raw]

    async def add_attempt(self, persona_id: str, attempt: Attempt) -> None:
        key = self.k(persona_id, "history")
        with store_errors("write the refine history"):
            async with self.redis.client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, json.dumps(attempt.to_dict()))
                pipe.ltrim(key, -HISTORY_KEEP, -1)
                await pipe.execute()

    async def attempts(self, persona_id: str, limit: int = 50) -> list[Attempt]:
        with store_errors("read the refine history"):
            raw = await self.redis.client.lrange(self.k(persona_id, "history"), -limit, -1)
        return [Attempt.from_dict(json.loads(r)) for r in raw]

    async def set_outcome(self, persona_id: str, candidate: str, outcome: str) -> None:
        """Mark an earlier attempt's live outcome (the rewriter's history shows it)."""
        key = self.k(persona_id, "history")
        with store_errors("update the refine history"):
            raw = await self.redis.client.lrange(key, 0, -1)
            for index, item in enumerate(raw):
                data = json.loads(item)
                if data.get("candidate") == candidate:
                    data["outcome"] = outcome
                    await self.redis.client.lset(key, index, json.dumps(data))

    @asynccontextmanager
    async def lock(self, persona_id: str, ttl_s: float = 60.0) -> AsyncIterator[None]:
        key, token = self.k(persona_id, "lock"), uuid.uuid4().hex
        with store_errors("take the refine lock"):
            taken = await self.redis.client.set(key, token, nx=True, px=int(ttl_s * 1000))
        if not taken:
            raise ExperimentError(f"another process is acting on {persona_id}'s experiment; try again shortly")
        try:
            yield
        finally:
            with store_errors("release the refine lock"):
                await self._release(keys=[key], args=[token])
