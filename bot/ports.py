"""The small async interfaces the engine depends on. Concrete stores and backends implement them;
only the composition root (`bot.app`) names the concrete classes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from langchain_core.language_models.chat_models import BaseChatModel

from bot.domain.feedback import RatedReply, Rating, ReplyRecord
from bot.domain.messages import StoredTurn
from bot.domain.persona import Persona
from bot.errors import PersonaFileError


class MemoryStore(Protocol):
    async def load(self, conversation_id: str, max_turns: int) -> list[StoredTurn]:
        """The last `max_turns` user+assistant pairs, oldest first."""
        ...

    async def append(
        self, conversation_id: str, turns: Sequence[StoredTurn], *, max_turns: int, ttl_seconds: int
    ) -> None: ...

    async def clear(self, conversation_id: str) -> None: ...

    async def forget_user(self, user_id: str) -> int:
        """Delete every stored message of this user everywhere; returns how many."""
        ...


class FeedbackLog(Protocol):
    async def record(self, record: ReplyRecord) -> None: ...

    async def get(self, reply_id: str) -> ReplyRecord | None: ...

    async def rate(self, rating: Rating) -> None:
        """Set (value ±1) or remove (value 0) one user's rating; raises ReplyNotFound."""
        ...

    async def ratings(self, reply_id: str) -> dict[str, int]: ...

    async def link(self, external_id: str, reply_id: str) -> None:
        """Remember that a transport message (e.g. 'discord:msg:123') shows this reply."""
        ...

    async def resolve(self, external_id: str) -> str | None: ...

    def iter_rated(self, persona_id: str | None = None) -> AsyncIterator[RatedReply]:
        """Every reply with at least one rating, oldest first, streamed in pages."""
        ...

    def recent(self, since: float | str, limit: int) -> AsyncIterator[ReplyRecord]:
        """The newest `limit` records created at or after `since` (a timestamp, or "-inf"), newest first."""
        ...

    async def stats(self) -> dict[str, dict[str, int]]:
        """Counters per "persona|version|variant": replies, up, down (kept forever)."""
        ...

    async def daily(self, sk: str) -> dict[str, dict[str, int]]:
        """Per-day counters of one "persona|version|variant": {day: {replies, up, down}}."""
        ...

    async def forget_user(self, user_id: str) -> int:
        """Delete the user's ratings and the replies to them; returns how many records."""
        ...


class PersonaRegistry(Protocol):
    def get(self, persona_id: str) -> Persona:
        """Raises PersonaNotFound."""
        ...

    def all(self) -> list[Persona]: ...

    @property
    def errors(self) -> list[PersonaFileError]:
        """Every current problem (one per problem in a file; why a persona is disabled)."""
        ...

    async def refresh(self) -> object:
        """Re-read the persona files now (hot reload); returns what changed."""
        ...


@dataclass(frozen=True)
class BoundModel:
    """A chat model configured for one persona, plus what the engine needs to budget its prompt."""

    chat_model: BaseChatModel
    backend: str
    model_name: str
    adapter: str | None
    context_window: int
    count_tokens: Callable[[str], int]
    #: Short hash of the adapter's files, so a rating names the exact adapter build it rates.
    adapter_hash: str | None = None


class ModelProvider(Protocol):
    def bind(self, persona: Persona) -> BoundModel:
        """Raises ModelLoadError when the persona's backend or adapter cannot serve."""
        ...
