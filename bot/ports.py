"""The small async interfaces the engine depends on. Concrete stores and backends implement them;
only the composition root (`bot.app`) names the concrete classes."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.domain.feedback import RatedReply, Rating, ReplyRecord
from bot.domain.messages import StoredTurn
from bot.domain.persona import Persona
from bot.domain.ratings import MessageRating, RateOutcome
from bot.domain.writes import Write
from bot.errors import PersonaFileError

if TYPE_CHECKING:
    from langchain_core.language_models.chat_models import BaseChatModel


class MemoryStore(Protocol):
    async def load(self, conversation_id: str, max_turns: int) -> list[StoredTurn]:
        """The last `max_turns` user+assistant pairs, oldest first."""
        ...

    async def append(
        self,
        conversation_id: str,
        turns: Sequence[StoredTurn],
        *,
        max_turns: int,
        ttl_seconds: int,
        reply_id: str | None = None,
    ) -> None:
        """Append turns; with a `reply_id`, appending the same reply's turns again is a no-op."""
        ...

    async def clear(self, conversation_id: str) -> None: ...

    async def forget_user(self, user_id: str) -> int:
        """Delete every stored message of this user everywhere; returns how many."""
        ...


class FeedbackLog(Protocol):
    """Every write is idempotent (a journal may replay a write the store already took)."""

    async def record(self, record: ReplyRecord) -> None:
        """Store a reply record; recording the same reply again is a no-op."""
        ...

    async def get(self, reply_id: str) -> ReplyRecord | None: ...

    async def rate(self, rating: Rating) -> RateOutcome:
        """Set (value ±1) or remove (value 0) one user's rating, unless the user's latest rating event on
        that reply is newer than `rating.at`; raises ReplyNotFound."""
        ...

    async def rate_message(self, rating: MessageRating) -> RateOutcome:
        """Rate the reply a transport message shows, resolved and judged atomically when applied
        ("ignored" when the message shows no reply)."""
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


class Journal(Protocol):
    """A durable local queue of writes the stores could not take (bot.journal.SqliteJournal)."""

    @property
    def pending(self) -> bool:
        """Writes this process knows of wait to be applied (new writes must queue behind them)."""
        ...

    async def append(self, writes: Sequence[Write]) -> None:
        """Durable when it returns; raises JournalError (disk error, journal full)."""
        ...

    async def prepend(self, writes: Sequence[Write]) -> None:
        """Like append, but ahead of every pending write (for writes older than all of them)."""
        ...

    async def oldest(self, limit: int) -> list[tuple[int, Write]]: ...

    async def remove(self, ids: Sequence[int]) -> None: ...

    async def bury(self, entry_id: int, reason: str) -> None:
        """Set aside a write that can never be applied."""
        ...

    async def settle(self) -> bool:
        """Whether nothing is pending (in any process sharing the journal); refreshes `pending`."""
        ...

    async def forget_user(self, user_id: str) -> int: ...

    async def forget_conversation(self, conversation_id: str) -> int: ...

    def claim_replay(self) -> bool:
        """Become the one replayer of this journal (non-blocking)."""
        ...

    def release_replay(self) -> None: ...


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


# -- Discord transport state (claims, pacing, reply slots, placements) ----------------------------
# Shared by every bot process through Redis (bot.coordination), with a local fallback while Redis
# cannot be reached. The Discord transport reaches them only through these ports.


class MessageClaims(Protocol):
    async def claim(self, message_id: str) -> bool:
        """True when this process should handle the message: its first claim, or a retry of this
        process's own claim; False when another attempt (a redelivery, another process) has it."""
        ...


class UserPacing(Protocol):
    async def reserve(self, user_id: str, sent_at: float) -> float:
        """The earliest time (epoch seconds) at which a message the user sent at `sent_at` may be
        answered: `sent_at` itself unless the user's previous message was less than a cooldown before."""
        ...


class SlotsFull(enum.Enum):
    """Why a reply slot was refused: every slot is taken, or every slot of the request's group."""

    TOTAL = "total"
    GROUP = "group"


class ReplySlots(Protocol):
    """Leases on the model calls that may run at once, in total and per group (a Discord server).

    A lease expires unless renewed, so the slots of a crashed process come back by themselves.
    """

    async def acquire(self, group: str | None) -> str | SlotsFull:
        """A lease token, or which limit is full."""
        ...

    async def renew(self, token: str) -> None: ...

    async def release(self, token: str) -> None: ...


#: A place personas can be chosen for: ("thread" | "channel" | "server", its id).
PlaceRef = tuple[str, int]


class PlacementStore(Protocol):
    async def lookup(self, chain: Sequence[PlaceRef]) -> tuple[str, PlaceRef] | None:
        """The persona chosen at the first place of `chain` that has one, and that place."""
        ...

    async def choose(self, place: PlaceRef, persona_id: str) -> None: ...

    async def clear(self, place: PlaceRef) -> bool:
        """Remove a choice; True when there was one."""
        ...


@dataclass(frozen=True)
class DiscordState:
    """What the composition root hands the Discord transport besides the engine."""

    claims: MessageClaims
    pacing: UserPacing
    slots: ReplySlots
    placements: PlacementStore
