"""The writes a user causes, as plain values: applied to the stores at once, or journaled while the
stores are down and applied later (bot.journal). Each knows whose words or ratings it carries, so
/forget-me can drop it from the journal, and encodes itself as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from bot.domain.feedback import Rating, ReplyRecord
from bot.domain.messages import StoredTurn
from bot.domain.ratings import MessageRating


@dataclass(frozen=True, slots=True)
class RecordReply:
    """Store a reply's record (its prompt holds the words of every participant)."""

    kind: ClassVar[str] = "record"
    record: ReplyRecord

    @property
    def users(self) -> frozenset[str]:
        return frozenset({self.record.user_id, *self.record.participants})

    def body(self) -> dict[str, Any]:
        return {"record": json.loads(self.record.to_json())}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RecordReply:
        return cls(ReplyRecord.from_json(json.dumps(body["record"])))


@dataclass(frozen=True, slots=True)
class AppendTurns:
    """Remember a reply's turns in its conversation, once (`reply_id` is the idempotency key)."""

    kind: ClassVar[str] = "turns"
    conversation_id: str
    turns: tuple[StoredTurn, ...]
    max_turns: int
    ttl_seconds: int
    reply_id: str

    @property
    def users(self) -> frozenset[str]:
        return frozenset(t.user_id for t in self.turns if t.user_id)

    def body(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "turns": [asdict(t) for t in self.turns],
            "max_turns": self.max_turns,
            "ttl_seconds": self.ttl_seconds,
            "reply_id": self.reply_id,
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> AppendTurns:
        turns = tuple(StoredTurn(**t) for t in body["turns"])
        return cls(body["conversation_id"], turns, body["max_turns"], body["ttl_seconds"], body["reply_id"])


@dataclass(frozen=True, slots=True)
class RateReply:
    """One rating event on a reply (value 0 withdraws)."""

    kind: ClassVar[str] = "rate"
    rating: Rating

    @property
    def users(self) -> frozenset[str]:
        return frozenset({self.rating.user_id})

    def body(self) -> dict[str, Any]:
        return asdict(self.rating)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RateReply:
        return cls(Rating(**body))


@dataclass(frozen=True, slots=True)
class RateMessage:
    """One rating event on a transport message, resolved to its reply when applied."""

    kind: ClassVar[str] = "rate_message"
    rating: MessageRating

    @property
    def users(self) -> frozenset[str]:
        return frozenset({self.rating.user_id})

    def body(self) -> dict[str, Any]:
        return asdict(self.rating)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RateMessage:
        return cls(MessageRating(**body))


@dataclass(frozen=True, slots=True)
class LinkMessages:
    """Remember which transport messages show a reply (ids only: no one's words)."""

    kind: ClassVar[str] = "link"
    reply_id: str
    external_ids: tuple[str, ...]

    @property
    def users(self) -> frozenset[str]:
        return frozenset()

    def body(self) -> dict[str, Any]:
        return {"reply_id": self.reply_id, "external_ids": list(self.external_ids)}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LinkMessages:
        return cls(body["reply_id"], tuple(body["external_ids"]))


@dataclass(frozen=True, slots=True)
class ForgetUser:
    """/forget-me asked while the stores were down (a user id only: it is never dropped by itself)."""

    kind: ClassVar[str] = "forget_user"
    user_id: str

    @property
    def users(self) -> frozenset[str]:
        return frozenset()

    def body(self) -> dict[str, Any]:
        return {"user_id": self.user_id}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ForgetUser:
        return cls(body["user_id"])


@dataclass(frozen=True, slots=True)
class ClearConversation:
    """/forget (one conversation's memory) asked while the stores were down."""

    kind: ClassVar[str] = "clear"
    conversation_id: str

    @property
    def users(self) -> frozenset[str]:
        return frozenset()

    def body(self) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ClearConversation:
        return cls(body["conversation_id"])


Write = RecordReply | AppendTurns | RateReply | RateMessage | LinkMessages | ForgetUser | ClearConversation

_DECODERS: dict[str, Callable[[dict[str, Any]], Write]] = {
    cls.kind: cls.from_body
    for cls in (RecordReply, AppendTurns, RateReply, RateMessage, LinkMessages, ForgetUser, ClearConversation)
}


def encode(write: Write) -> str:
    return json.dumps(write.body(), ensure_ascii=False, separators=(",", ":"))


def decode(kind: str, raw: str) -> Write:
    """Raises ValueError (unknown kind, broken JSON) or TypeError/KeyError (missing fields)."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ValueError(f"unknown journaled write {kind!r}")
    return decoder(json.loads(raw))
