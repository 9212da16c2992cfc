"""The reply queue on its own: turns inside a lane, reply slots across lanes, estimates, supervision."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.coordination.slots import LocalSlots
from bot.ports import SlotsFull
from bot.transports.discord.lanes import Lane, Ticket
from bot.transports.discord.queue import ReplyQueue

WAIT_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ticket(message_id: int, user: str, *, not_before: float = 0.0) -> Ticket:
    return Ticket(message_id, "lane", user, None, arrived=0.0, not_before=not_before)


async def granted(*tickets: Ticket) -> None:
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(*(t.grant for t in tickets))


async def settle() -> None:
    """Let the pump and the background releases run (they need a few loop turns, no time)."""
    for _ in range(20):
        await asyncio.sleep(0)


# -- a lane ---------------------------------------------------------------------------------------


async def test_users_take_turns_least_recently_answered_first() -> None:
    lane = Lane(None)
    for message_id, user in [(1, "ann"), (2, "ann"), (3, "ann"), (4, "bob"), (6, "cat"), (5, "bob")]:
        lane.add(ticket(message_id, user))
    order = []
    while (next_one := lane.ready(now=0.0)) is not None:
        lane.start(next_one)
        order.append((next_one.user, next_one.message_id))
        lane.running = None
    assert order == [("ann", 1), ("bob", 4), ("cat", 6), ("ann", 2), ("bob", 5), ("ann", 3)]
    assert lane.idle


async def test_a_user_answered_just_now_waits_behind_the_others() -> None:
    lane = Lane(None)
    first = ticket(1, "ann")
    lane.add(first)
    lane.start(first)  # ann's reply is being written
    lane.add(ticket(2, "ann"))  # she adds something meanwhile
    lane.add(ticket(3, "bob"))
    assert lane.ready(0.0) is None, "one reply at a time"
    lane.running = None
    assert lane.ready(0.0).user == "bob"  # type: ignore[union-attr]


async def test_a_cooling_user_is_skipped_until_their_time_and_estimates_count_turns() -> None:
    lane = Lane(None)
    slow = ticket(1, "ann", not_before=10.0)
    lane.add(slow)
    lane.add(ticket(2, "bob"))
    later = ticket(3, "bob")
    lane.add(later)
    assert lane.ready(0.0).user == "bob"  # type: ignore[union-attr]
    assert lane.next_start() == 0.0
    assert lane.ahead_of(later) == 2, "bob's first message and ann's one come before bob's second"
    assert lane.ahead_of(slow) == 0
    assert lane.ready(10.0) is slow


# -- the queue ------------------------------------------------------------------------------------


async def test_limits_per_server_and_in_total() -> None:
    queue = ReplyQueue(LocalSlots(total=3, per_group=2), total=3, per_group=2)
    a, b, c = (queue.submit(i, f"channel-{i}", "ann", "server-1") for i in (1, 2, 3))
    other = queue.submit(4, "channel-4", "bob", "server-2")
    await granted(a, b, other)
    await settle()
    assert not c.granted, "two per server"
    late = queue.submit(5, "dm-5", "cat", None)
    await settle()
    assert not late.granted, "three in total"
    queue.leave(a)
    await granted(c)
    queue.leave(other)
    await granted(late)
    for t in (b, c, late):
        queue.leave(t)
    await settle()
    assert (queue.running, queue.waiting) == (0, 0)
    await queue.close()


async def test_one_reply_at_a_time_per_conversation_and_leaving_frees_the_place() -> None:
    slots = LocalSlots(total=8, per_group=8)
    queue = ReplyQueue(slots, total=8, per_group=8)
    first = queue.submit(1, "channel", "ann", "s")
    second = queue.submit(2, "channel", "bob", "s")
    third = queue.submit(3, "channel", "cat", "s")
    await granted(first)
    await settle()
    assert not second.granted
    queue.leave(second)  # e.g. bob deleted his message while it waited
    queue.leave(first)
    await granted(third)
    queue.leave(third)
    await settle()
    assert await slots.acquire("s") != SlotsFull.TOTAL and queue.running == 0
    await queue.close()


async def test_estimates_come_from_the_place_in_line_and_recent_replies() -> None:
    clock = Clock()
    queue = ReplyQueue(LocalSlots(total=1, per_group=1), total=1, per_group=1, clock=clock)
    for message_id in range(1, 4):  # three replies of 2 s each
        done = queue.submit(message_id, "lane", "ann", None)
        await granted(done)
        clock.now += 2.0
        queue.leave(done)
    assert queue.service_time() == 2.0
    running = queue.submit(10, "lane", "ann", None)
    await granted(running)
    waiting = [queue.submit(11 + i, "lane", user, None) for i, user in enumerate(["bob", "cat", "dan"])]
    assert [queue.estimate(t) for t in waiting] == [2.0, 4.0, 6.0]
    assert queue.estimate(running) == 0.0
    held = queue.submit(20, "other-lane", "eve", None, delay=30.0)
    assert queue.estimate(held) == 30.0, "a cooldown longer than the line is what it waits"
    for t in (running, *waiting, held):
        queue.leave(t)
    await queue.close()


class FlakySlots(LocalSlots):
    """Slots whose first acquire raises, as a broken store would."""

    def __init__(self, fail: Callable[[], bool]) -> None:
        super().__init__(total=4, per_group=4)
        self.fail = fail

    async def acquire(self, group: str | None) -> str | SlotsFull:
        if self.fail():
            raise RuntimeError("store exploded")
        return await super().acquire(group)


async def test_a_failing_pump_is_restarted_and_nobody_is_stranded(caplog: pytest.LogCaptureFixture) -> None:
    failures = iter([True])
    queue = ReplyQueue(FlakySlots(lambda: next(failures, False)), total=4, per_group=4)
    waiting = queue.submit(1, "lane", "ann", None)
    await granted(waiting)
    assert any("pump failed; restarting it" in r.getMessage() for r in caplog.records)
    queue.leave(waiting)
    await queue.close()
