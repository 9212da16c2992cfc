"""The reply queue: every message waits its turn, fairly, with an end to every wait.

- A lane per conversation (see `lanes`): one reply at a time, users taking turns.
- Lanes start in the order their next messages were sent, each when a reply slot is free: at most
  `max_replies` in total and `max_replies_per_server` per server, leased from `ReplySlots`
  (shared by every bot process through Redis; a lease is renewed while its reply runs).
- `estimate` says how long a message should still wait, from its place in line and the duration
  of recent replies; the caller decides what to tell the user and when to give up.

One pump task grants turns; it is restarted if it ever fails, and every waiter has its own
deadline, so a broken pump delays messages but never strands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from bot.ports import ReplySlots, SlotsFull
from bot.tasks import alongside
from bot.transports.discord.lanes import Lane, Ticket

log = logging.getLogger(__name__)

POLL_S = 0.25  # while another process holds the free slots, ask again this often
IDLE_S = 1.0  # the pump looks again at least this often
RENEW_EVERY_S = 10.0  # a third of the lease's life
FIRST_GUESS_S = 3.0  # the duration of a reply before any has been measured
MIN_SERVICE_S = 0.05
CLOSE_WAIT_S = 2.0


class ReplyQueue:
    def __init__(
        self, slots: ReplySlots, *, total: int, per_group: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.slots = slots
        self.total = total
        self.per_group = per_group
        self.clock = clock
        self._lanes: dict[str, Lane] = {}
        self._leases: dict[Ticket, str] = {}  # running tickets and their lease tokens
        self._durations: deque[float] = deque(maxlen=50)
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[Any]] = set()

    # -- what waiters do ------------------------------------------------------------------------

    def submit(self, message_id: int, lane: str, user: str, group: str | None, *, delay: float = 0.0) -> Ticket:
        """Queue a message; `delay` holds it back (the user's cooldown). Await `ticket.grant`."""
        now = self.clock()
        ticket = Ticket(message_id, lane, user, group, arrived=now, not_before=now + max(0.0, delay))
        self._lanes.setdefault(lane, Lane(group)).add(ticket)
        self._poke()
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """The ticket's message is done (answered, given up or stopped): free its place or slot."""
        lane = self._lanes.get(ticket.lane)
        token = self._leases.pop(ticket, None)
        if token is not None:
            if ticket.started is not None:
                self._durations.append(self.clock() - ticket.started)
            self._background(self.slots.release(token))
        if lane is not None:
            if lane.running is ticket:
                lane.running = None
            lane.remove(ticket)
            if lane.idle:
                del self._lanes[ticket.lane]
        if not ticket.grant.done():
            ticket.grant.cancel()
        self._poke()

    @contextlib.asynccontextmanager
    async def lease_kept(self, ticket: Ticket) -> AsyncIterator[None]:
        """Renew the ticket's lease for as long as its reply runs."""
        token = self._leases.get(ticket)

        async def renew() -> None:
            while token is not None:
                await asyncio.sleep(RENEW_EVERY_S)
                await self.slots.renew(token)

        async with alongside(renew(), name="lease-renewal"):
            yield

    def estimate(self, ticket: Ticket) -> float:
        """Seconds until `ticket` should start (0 once it has)."""
        lane = self._lanes.get(ticket.lane)
        if ticket.granted or lane is None:
            return 0.0
        now = self.clock()
        in_lane = lane.ahead_of(ticket) + (lane.running is not None)
        earlier = [t for other in self._lanes.values() for t in other.waiting() if t.message_id < ticket.message_id]
        overall = (len(self._leases) + len(earlier)) / self.total
        in_group = 0.0
        if ticket.group is not None:
            running = sum(1 for t in self._leases if t.group == ticket.group)
            in_group = (running + sum(1 for t in earlier if t.group == ticket.group)) / self.per_group
        turns = max(float(in_lane), overall, in_group)
        return max(turns * self.service_time(), ticket.not_before - now)

    def service_time(self) -> float:
        """How long a reply holds its turn: the median of recent ones."""
        if not self._durations:
            return FIRST_GUESS_S
        return max(MIN_SERVICE_S, statistics.median(self._durations))

    @property
    def waiting(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    @property
    def running(self) -> int:
        return len(self._leases)

    async def close(self) -> None:
        """Stop granting turns; give pending lease releases a moment (else their leases expire)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._chores:
            await asyncio.wait(set(self._chores), timeout=CLOSE_WAIT_S)
        for task in set(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)

    # -- the pump -------------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name="reply-queue pump")
            self._pump.add_done_callback(self._pump_ended)

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            log.error("the reply queue's pump failed; restarting it", exc_info=exc)
            if self._lanes:
                asyncio.get_running_loop().call_later(POLL_S, self._poke)

    async def _run_pump(self) -> None:
        while self._lanes:
            self._wake.clear()
            pause = await self._grant_turns()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _grant_turns(self) -> float:
        """Start every message that may start now; returns how long to wait before looking again."""
        now = self.clock()
        ready = [t for lane in self._lanes.values() if (t := lane.ready(now)) is not None]
        full_groups: set[str | None] = set()
        pause = IDLE_S
        for ticket in sorted(ready, key=lambda t: t.message_id):
            if ticket.group in full_groups:
                continue
            if len(self._leases) >= self.total:
                return IDLE_S  # a local reply ends first, and wakes the pump
            result = await self.slots.acquire(ticket.group)
            if result is SlotsFull.TOTAL:
                return POLL_S
            if result is SlotsFull.GROUP:
                full_groups.add(ticket.group)
                pause = POLL_S
                continue
            assert isinstance(result, str)
            self._start(ticket, result)
        starts = [s for lane in self._lanes.values() if (s := lane.next_start()) is not None and s > now]
        return max(0.0, min([pause, *(s - self.clock() for s in starts)]))

    def _start(self, ticket: Ticket, token: str) -> None:
        lane = self._lanes.get(ticket.lane)
        if ticket.grant.done() or lane is None or lane.running is not None or not lane.holds(ticket):
            self._background(self.slots.release(token))  # it left while the slot was being leased
            return
        lane.start(ticket)
        ticket.started = self.clock()
        self._leases[ticket] = token
        ticket.grant.set_result(token)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("reply slot bookkeeping failed: %s", exc)
