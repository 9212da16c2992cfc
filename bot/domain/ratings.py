"""Ratings given on a transport message, and what became of a rating.

A Discord reaction names a Discord message, not a reply: the message→reply link lives in the store,
so a `MessageRating` is resolved (and, for a removed reaction, judged) where the store applies it,
atomically, which also works when it is replayed from the journal after an outage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

#: rated / withdrawn: the rating changed (or was confirmed); ignored: not a rating of a known reply, a
#: removed reaction that was not the user's rating, or an event older than the stored one;
#: queued: the store is down, the rating is journaled and applied when it is back.
RateOutcome = Literal["rated", "withdrawn", "ignored", "queued"]


@dataclass(frozen=True, slots=True)
class MessageRating:
    """A user's 👍 (+1) or 👎 (-1) on a transport message, added or removed at time `at`.

    Removing a reaction withdraws the rating only if the user's stored rating is that reaction's
    value; otherwise the user's other reaction is their rating and the removal changes nothing.
    """

    external_id: str
    user_id: str
    value: Literal[-1, 1]
    removed: bool = False
    at: float = field(default_factory=time.time)
    #: Where the rating came from, e.g. {"source": "discord", "discord_message_id": "..."}.
    context: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.value not in (-1, 1):
            raise ValueError("a message rating is +1 or -1 (removal is `removed=True`)")
