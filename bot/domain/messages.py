"""Conversation messages and the requests that transports hand to the engine."""

from __future__ import annotations

import functools
import time
import unicodedata
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
    #: The speaker's display name when it was said (user turns; "" in turns stored before names were kept).
    speaker: str = ""

    def as_message(self) -> ChatMessage:
        return ChatMessage(self.role, self.content)


#: Characters a display name loses before it reaches a prompt: brackets and quotes (fake markup, fake
#: turns), @ and # (mention syntax), : (a fake "Name: text" line), backslash and backquote.
_NAME_DROP = frozenset("[](){}<>@#:`\\|\"")
STORED_NAME_LENGTH = 100
DEFAULT_SPEAKER_NAME = "User"


@functools.lru_cache(maxsize=4096)
def clean_name(name: str, max_length: int = 32) -> str:
    """A display name made safe to put in a prompt: one line, no control or formatting characters, no
    brackets, mention or turn syntax, at most `max_length` characters ("User" if nothing is left)."""
    out = []
    for ch in unicodedata.normalize("NFKC", name[: STORED_NAME_LENGTH * 4]):
        category = unicodedata.category(ch)
        if category in ("Cf", "Cs", "Co", "Cn") or ch in _NAME_DROP:
            continue  # invisible, unassigned or private characters, and syntax
        out.append(" " if category[0] in "CZ" else ch)  # control, line and paragraph breaks, odd spaces
    cleaned = " ".join("".join(out).split())[:max_length].strip()
    return cleaned or DEFAULT_SPEAKER_NAME


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
    #: A place several users share (a server channel or thread): a card's group-only greetings apply.
    group: bool = False
