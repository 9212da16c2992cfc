"""The message path after the edge: claim → cooldown → line → engine → sink, for one Inbound.

    outcome = await MessageHandler(services, client).handle(inbound)

Every message that should be answered is answered once, or given up with a visible reason:
a redelivered message is recognised by its claim; a message sent within the user's cooldown
waits until the cooldown has passed (judged by when each was sent); a message expected to wait
longer than `wait_notice_s` shows a notice saying about how long, which the reply then replaces;
a message that would wait longer than `max_wait_s` is given up, saying why. Each wait has an end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import discord

from bot.domain.persona import Persona
from bot.engine import ReplyFinished
from bot.errors import ModelBusy, ModelError, StoreError
from bot.transports.discord import notices
from bot.transports.discord.answering import generate, request_for
from bot.transports.discord.errors import TRUNCATED, apology_for
from bot.transports.discord.ids import external_id
from bot.transports.discord.inbound import Inbound
from bot.transports.discord.inflight import SHUTTING_DOWN, ReplyStopped
from bot.transports.discord.lanes import Ticket
from bot.transports.discord.outlet import Outlet
from bot.transports.discord.services import Services
from bot.transports.discord.streaming import ReplyStream

log = logging.getLogger(__name__)

T = TypeVar("T")

RATING_HINTS = ("\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}")
NUDGE = "-# Mention me with a message and I'll answer."
CHECK_S = 2.0  # a waiting message looks at its expected wait this often
NOTICE_EDIT_S = 10.0  # a notice changes at most this often


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a message: ignored, duplicate, greeted, replied, given_up (too long a wait,
    said so), busy (the model's own queue was full, said so), stopped or failed."""

    kind: str
    message_ids: tuple[int, ...] = ()
    reply_id: str | None = None


@dataclass(slots=True)
class Answer:
    """One message on its way: what it says, who speaks, and where the answer goes."""

    inbound: Inbound
    persona: Persona
    outlet: Outlet
    stream: ReplyStream


class MessageHandler:
    def __init__(self, services: Services, client: discord.Client) -> None:
        self.services = services
        self.settings = services.settings
        self.client = client

    async def handle(self, inbound: Inbound) -> Outcome:
        """Answer `inbound`. On failure an apology is shown and the error re-raised for logging."""
        state = self.services.state
        if not await state.claims.claim(str(inbound.message_id)):
            log.info("message %s was delivered again; already handled", inbound.message_id)
            return Outcome("duplicate")
        answer = await self._prepare(inbound)
        if not inbound.text:
            return await self._greet(answer)
        start_at = await state.pacing.reserve(inbound.speaker.id, inbound.sent_at)
        work = self._in_turn(answer, delay=start_at - time.time())
        try:
            return await self.services.in_flight.run(
                inbound.message_id, inbound.conversation_id, inbound.speaker.id, work
            )
        except ReplyStopped as stopped:
            log.info("%s", stopped)
            if stopped.reason == SHUTTING_DOWN:  # not the user's doing: say so, rather than vanish
                await self._quietly(answer.stream.fail(notices.SHUTTING_DOWN), "say that the bot is restarting")
                return Outcome("given_up", tuple(answer.stream.message_ids))
            await self._quietly(answer.stream.withdraw(), "delete a stopped reply")
            return Outcome("stopped")

    async def _prepare(self, inbound: Inbound) -> Answer:
        persona = await self.services.persona_at(inbound.place)
        outlet = Outlet(self.client, self.services.webhooks, inbound.answer_at, persona)
        stream = ReplyStream(outlet, interval=self.settings.edit_interval_s)
        if inbound.truncated:
            stream.header = TRUNCATED.format(limit=self.settings.max_input_chars)
        return Answer(inbound, persona, outlet, stream)

    async def _greet(self, answer: Answer) -> Outcome:
        """A bare mention: the persona's greeting (not a model call, so it does not queue); sticky per conversation."""
        inbound = answer.inbound
        greeting = await self.services.engine.greeting(
            answer.persona, inbound.speaker.name, inbound.channel_label, conversation_id=inbound.conversation_id,
            group=not inbound.place.is_dm,  # a server channel or thread is shared: group-only greetings apply
        )
        ids = await answer.stream.finish(greeting or NUDGE)
        return Outcome("greeted", tuple(ids))

    # -- waiting in line --------------------------------------------------------------------------

    async def _in_turn(self, answer: Answer, *, delay: float) -> Outcome:
        inbound, queue, stream = answer.inbound, self.services.queue, answer.stream
        group = str(inbound.place.guild_id) if inbound.place.guild_id is not None else None
        ticket = queue.submit(inbound.message_id, inbound.conversation_id, inbound.speaker.id, group, delay=delay)
        try:
            reason = await self._wait_turn(ticket, stream, delay)
            if reason is not None:
                log.info("message %s given up: %s", inbound.message_id, reason)
                return Outcome("given_up", tuple(await stream.fail(reason)))
            self.services.in_flight.generating(inbound.message_id)
            deadline = asyncio.get_running_loop().time() + self.settings.reply_timeout_s
            async with queue.lease_kept(ticket):
                finished = await self._within(deadline, stream, self._generate(answer))
        except ModelBusy as busy:  # the local model's own queue is full: load, not a failure
            log.warning("message %s: %s", inbound.message_id, busy)
            await self._quietly(stream.fail(apology_for(busy)), "post an apology")
            return Outcome("busy", tuple(stream.message_ids))
        finally:
            # The turn ends once the engine has the reply (and remembers it): showing its last
            # words does not hold up the next message of the conversation.
            queue.leave(ticket)
        shown = f"{finished.text}\n\n{notices.WITHOUT_MEMORY}" if finished.without_memory else finished.text
        ids = await self._within(deadline, stream, stream.finish(shown))
        await self._link(ids, finished.reply_id)
        if self.settings.rating_reactions:
            await answer.outlet.react(ids[-1], RATING_HINTS)
        return Outcome("replied", tuple(ids), finished.reply_id)

    async def _wait_turn(self, ticket: Ticket, stream: ReplyStream, delay: float) -> str | None:
        """Wait until the ticket may start: None then, or why it was given up."""
        settings, queue = self.settings, self.services.queue
        expected = queue.estimate(ticket)
        if expected > settings.max_wait_s:
            if delay > settings.max_wait_s:
                return notices.too_fast(settings.user_cooldown_s)
            return notices.too_busy(expected, settings.max_wait_s)
        deadline = ticket.arrived + settings.max_wait_s
        last_notice = -NOTICE_EDIT_S
        while not ticket.granted:
            remaining = deadline - queue.clock()
            if remaining <= 0:
                return notices.waited_too_long(settings.max_wait_s)
            expected = queue.estimate(ticket)
            if expected > settings.wait_notice_s and queue.clock() - last_notice >= NOTICE_EDIT_S:
                last_notice = queue.clock()
                await self._quietly(stream.notice(notices.waiting(expected)), "show a waiting notice")
            await asyncio.wait({ticket.grant}, timeout=min(remaining, CHECK_S))
        return None

    # -- the reply --------------------------------------------------------------------------------

    async def _generate(self, answer: Answer) -> ReplyFinished:
        async with answer.outlet.typing():
            return await generate(self.services.engine, request_for(answer.inbound, answer.persona), answer.stream)

    async def _within(self, deadline: float, stream: ReplyStream, work: Awaitable[T]) -> T:
        """A step of the reply, by the reply's deadline; a failure is apologised for, then re-raised."""
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except ModelBusy:
            raise
        except TimeoutError as exc:
            late = ModelError(f"the reply took longer than reply_timeout_s={self.settings.reply_timeout_s:g}")
            await self._quietly(stream.fail(apology_for(late)), "post an apology")
            raise late from exc
        except Exception as exc:
            await self._quietly(stream.fail(apology_for(exc)), "post an apology")
            raise

    async def _link(self, message_ids: list[int], reply_id: str) -> None:
        """Remember which reply the messages show, so reactions on them rate it (journaled if Redis is down)."""
        try:
            await self.services.engine.link_shown(reply_id, [external_id(m) for m in message_ids])
        except StoreError as exc:
            log.warning("reply %s was shown but cannot be rated: %s", reply_id, exc)

    @staticmethod
    async def _quietly(work: Awaitable[object], what: str) -> None:
        """Await a Discord call whose failure must not end the message's handling."""
        try:
            await work
        except (discord.HTTPException, TimeoutError) as exc:
            log.warning("could not %s: %s", what, exc)
