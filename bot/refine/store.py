"""Where the refinement loop keeps its state (the running experiment, the journal, the history): the
port, and the journal entry. The Redis implementation is `bot.refine.redis_store.RedisRefineStore`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bot.refine.experiments import Experiment
from bot.refine.proposers import Attempt


@dataclass(frozen=True)
class JournalEntry:
    """One step of the loop: what happened (`kind`), why, in one sentence (`summary`), the numbers."""

    persona_id: str
    kind: str
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, raw: str | bytes) -> JournalEntry:
        return cls(**json.loads(raw))


class RefineStore(Protocol):
    async def experiment(self, persona_id: str) -> Experiment | None: ...

    async def save_experiment(self, experiment: Experiment) -> None: ...

    async def end_experiment(self, persona_id: str) -> None: ...

    async def running(self) -> list[Experiment]:
        """Every persona's running experiment."""
        ...

    async def journal(self, entry: JournalEntry) -> None: ...

    async def entries(self, persona_id: str, limit: int = 20) -> list[JournalEntry]:
        """The newest `limit` entries, oldest first."""
        ...

    async def add_attempt(self, persona_id: str, attempt: Attempt) -> None: ...

    async def attempts(self, persona_id: str, limit: int = 50) -> list[Attempt]: ...

    async def set_outcome(self, persona_id: str, candidate: str, outcome: str) -> None: ...

    async def personas(self) -> list[str]:
        """Personas with refinement activity (a journal or an experiment)."""
        ...

    def lock(self, persona_id: str, ttl_s: float = 60.0) -> Any:
        """Async context manager: hold the persona's lock, or raise ExperimentError if another holds it."""
        ...
