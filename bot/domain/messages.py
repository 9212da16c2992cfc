"""Conversation messages and the requests that transports hand to the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class StoredTurn:
    """One remembered message of a conversation, as kept by a MemoryStore."""

    role: Literal["user", "assistant"]
    content: str
    user_id: str = ""
    persona_id: str = ""
    at: float = field(default_factory=time.time)

    def as_message(self) -> ChatMessage:
        return ChatMessage(self.role, self.content)


@dataclass(frozen=True, slots=True)
class Speaker:
    """Who sent a message: a stable id (e.g. 'discord:1234' or 'console:you') and a display name."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a transport asks of the engine: one new user message in one conversation."""

    conversation_id: str
    speaker: Speaker
    text: str
    persona_id: str | None = None
    channel_name: str = "direct messages"
    server_name: str = ""
    #: Transport ids (message, channel, guild...) stored with the reply record for later lookups.
    context: dict[str, str] = field(default_factory=dict)
