"""Reply records and ratings: the raw material of prompt refinement and training data.

A `ReplyRecord` says exactly what produced a reply (persona, version, prompt, model, adapter,
parameters), so every rating rates one precise prompt. The format is versioned (`schema`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

RECORD_SCHEMA = 1

RatingValue = Literal[-1, 0, 1]


def new_reply_id() -> str:
    return uuid.uuid4().hex


@functools.lru_cache(maxsize=1024)
def prompt_hash(text: str) -> str:
    """Short stable hash of a rendered prompt text (identifies which prompt was rated).

    Memoized: a persona's rendered system prompt repeats across messages (it changes with the day or
    the minute at most), and hashing it costs more than the lookup."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    reply_id: str
    conversation_id: str
    user_id: str
    persona_id: str
    persona_version: str
    model: str
    backend: str
    adapter: str | None
    generation: dict[str, Any]
    #: The full prompt as sent to the model: [{"role": ..., "content": ...}, ...].
    prompt_messages: list[dict[str, str]]
    reply: str
    latency_s: float
    first_token_s: float | None
    prompt_tokens: int
    completion_tokens: int
    system_prompt_hash: str
    variant: str = "default"
    adapter_hash: str | None = None
    created_at: float = field(default_factory=time.time)
    #: Transport ids (e.g. discord message/channel/guild ids).
    context: dict[str, str] = field(default_factory=dict)
    #: Every user whose messages may appear in the prompt (the asker and the remembered speakers):
    #: deleting any of them (/forget-me) deletes this record.
    participants: list[str] = field(default_factory=list)
    #: Lorebook entries in the prompt, as "book#entry" ("persona" is the persona's own book), so
    #: ratings can be attributed to the lore that shaped a reply.
    lorebook_entries: list[str] = field(default_factory=list)
    #: The greeting that opened the conversation (0: the greeting, 1..: alternates); None: unknown.
    greeting: int | None = None
    schema: int = RECORD_SCHEMA

    def to_json(self) -> str:
        # A shallow field dict: asdict() deep-copies the prompt messages, which costs more than Redis.
        data = {name: getattr(self, name) for name in _RECORD_FIELDS}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReplyRecord:
        """Read a record of any age: fields it lacks take their defaults, fields this version does not
        know (written by a newer one) are left out."""
        data = json.loads(raw)
        data.pop("schema", None)
        if not data.keys() <= _KNOWN_FIELDS:
            data = {k: v for k, v in data.items() if k in _KNOWN_FIELDS}
        return cls(**data)


_RECORD_FIELDS = tuple(f.name for f in fields(ReplyRecord))
_KNOWN_FIELDS = frozenset(_RECORD_FIELDS)


@dataclass(frozen=True, slots=True)
class Rating:
    reply_id: str
    user_id: str
    value: RatingValue
    at: float = field(default_factory=time.time)
    #: Where the rating came from, e.g. {"source": "discord", "message_id": "..."}.
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FailedReply:
    """A reply that was never written: the model failed (or the prompt could not fit). Kept so an
    experiment's error-rate guardrail sees failures that leave no ReplyRecord behind."""

    persona_id: str
    persona_version: str
    variant: str
    conversation_id: str
    kind: str  # the error class, e.g. "ModelError"
    at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in self.__slots__}, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> FailedReply:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class RatedReply:
    """A reply with all its current ratings (user id -> +1/-1)."""

    record: ReplyRecord
    ratings: dict[str, int]

    @property
    def score(self) -> int:
        return sum(self.ratings.values())

    @property
    def ups(self) -> int:
        return sum(1 for v in self.ratings.values() if v > 0)

    @property
    def downs(self) -> int:
        return sum(1 for v in self.ratings.values() if v < 0)


@dataclass(slots=True)
class LoreStats:
    """How the replies one lorebook entry shaped were rated."""

    replies: int = 0
    ups: int = 0
    downs: int = 0


def lore_attribution(rated: Iterable[RatedReply]) -> dict[str, LoreStats]:
    """Per lorebook entry ("book#entry", as records list them): the rated replies whose prompt held it,
    and their 👍/👎 (a user's rating counts once). For reports and refinement: an entry whose replies
    are rated down more than the persona's are is a candidate to rewrite."""
    stats: dict[str, LoreStats] = {}
    for reply in rated:
        for ref in reply.record.lorebook_entries:
            entry = stats.setdefault(ref, LoreStats())
            entry.replies += 1
            entry.ups += reply.ups
            entry.downs += reply.downs
    return stats
