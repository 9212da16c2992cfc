"""Records of what happened in the fake Discord."""

from __future__ import annotations

import asyncio
import re
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
    times: list[float] = field(default_factory=list)  # time.monotonic() of the post and of each edit

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


@dataclass
class Failure:
    """A REST fault to inject: the next `times` requests matching answer `status` instead."""

    method: str
    pattern: str  # a regex the whole path (after /api/v10) must match
    status: int
    times: int = 1
    code: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.fullmatch(self.pattern, path) is not None


@dataclass
class Gate:
    """REST requests held until `open` is set (e.g. a slow Discord endpoint)."""

    method: str
    pattern: str
    open: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0  # requests held right now

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.pattern, path) is not None
