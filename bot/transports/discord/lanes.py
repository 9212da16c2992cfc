"""One conversation's waiting messages: users take turns, each user's messages keep their order.

A lane runs one reply at a time, as the engine answers one message of a conversation at a time.
Its next message belongs to the user answered least recently here (never, first; ties by whose
message was sent first), among those whose next message may start now (a cooldown may still hold
it back). So what a user sends while their reply is pending waits behind the other users' messages,
and in a busy channel someone who sends five messages in a row gets one turn per round.

"First" is by message id (Discord ids grow with the time a message was sent), not by when this
process got to a message: handling starts concurrently and finishes in any order.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False)
class Ticket:
    """A message waiting for, or holding, its turn."""

    message_id: int  # also its place in line: ids grow with the time messages were sent
    lane: str  # the conversation
    user: str
    group: str | None  # the server, for its limit
    arrived: float  # monotonic
    not_before: float  # monotonic: the user's cooldown, judged by when they sent it
    grant: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    started: float | None = None

    @property
    def granted(self) -> bool:
        return self.grant.done() and not self.grant.cancelled()


class Lane:
    def __init__(self, group: str | None) -> None:
        self.group = group
        self.queues: dict[str, deque[Ticket]] = {}  # each user's waiting messages, in order
        self.running: Ticket | None = None
        self._served: dict[str, int] = {}  # user -> when (in turns) they were last answered here
        self._turns = itertools.count(1)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    @property
    def idle(self) -> bool:
        return self.running is None and not self.queues

    def waiting(self) -> Iterator[Ticket]:
        for queue in self.queues.values():
            yield from queue

    def holds(self, ticket: Ticket) -> bool:
        return ticket in self.queues.get(ticket.user, ())

    def add(self, ticket: Ticket) -> None:
        queue = self.queues.setdefault(ticket.user, deque())
        at = len(queue)
        while at > 0 and queue[at - 1].message_id > ticket.message_id:
            at -= 1
        queue.insert(at, ticket)

    def remove(self, ticket: Ticket) -> bool:
        queue = self.queues.get(ticket.user)
        if queue is None or ticket not in queue:
            return False
        queue.remove(ticket)
        if not queue:
            del self.queues[ticket.user]
        return True

    def turn_order(self) -> list[str]:
        """Users with waiting messages, the next to be answered first (cooldowns aside)."""
        return sorted(self.queues, key=lambda user: (self._served.get(user, 0), self.queues[user][0].message_id))

    def ready(self, now: float) -> Ticket | None:
        """The message to start next, or None (one is running, or every user still cools down)."""
        if self.running is not None:
            return None
        return next((self.queues[u][0] for u in self.turn_order() if self.queues[u][0].not_before <= now), None)

    def next_start(self) -> float | None:
        """When the earliest held-back message may start."""
        return min((q[0].not_before for q in self.queues.values()), default=None)

    def start(self, ticket: Ticket) -> None:
        queue = self.queues[ticket.user]
        assert queue[0] is ticket, "a lane starts each user's messages in order"
        queue.popleft()
        if not queue:
            del self.queues[ticket.user]
        self._served[ticket.user] = next(self._turns)
        self.running = ticket

    def ahead_of(self, ticket: Ticket) -> int:
        """How many waiting messages of this lane start before `ticket` (cooldowns aside)."""
        own = self.queues.get(ticket.user)
        if own is None or ticket not in own:
            return 0
        rank = own.index(ticket)  # full rounds of turns before its own
        ahead, before_it = 0, True
        for user in self.turn_order():
            if user == ticket.user:
                ahead += rank
                before_it = False
            else:
                ahead += min(len(self.queues[user]), rank + 1 if before_it else rank)
        return ahead
