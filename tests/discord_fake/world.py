"""Records of what happened in the fake Discord."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .payloads import Json


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class SentMessage:
    """A message the bot created (channel send, webhook or interaction follow-up) and its edits."""

    id: int
    channel_id: int
    payload: Json
    contents: list[str]
    allowed_mentions: list[Any]
    via: str = "channel"
    webhook_id: int | None = None
    reference_id: int | None = None
    deleted: bool = False

    @property
    def content(self) -> str:
        return self.contents[-1]


@dataclass
class Reaction:
    message_id: int
    emoji: str
    user_id: int


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    channels: list[Json] = field(default_factory=list)
    threads: list[Json] = field(default_factory=list)
    roles: list[Json] = field(default_factory=list)
    members: dict[int, list[int]] = field(default_factory=dict)  # user id -> role ids
