"""Answer one Discord message: pick the persona, stream the engine's reply, link it for ratings."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import discord

from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.engine import ReplyFinished, TextDelta
from bot.errors import ModelBusy, ModelError, StoreError
from bot.transports.discord.errors import TRUNCATED, apology_for
from bot.transports.discord.inflight import ReplyStopped
from bot.transports.discord.places import Place, Trigger, channel_label, place_of, prompt_text, truncate
from bot.transports.discord.services import Services, external_id, user_id
from bot.transports.discord.sinks import ChannelSink, typing_indicator
from bot.transports.discord.streaming import MessageSink, ReplyStream

log = logging.getLogger(__name__)

RATING_HINTS = ("\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}")
NUDGE = "-# Mention me with a message and I'll answer."


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a message: ignored, duplicate, cooldown, busy, greeted, replied, stopped or failed."""

    kind: str
    message_ids: tuple[int, ...] = ()
    reply_id: str | None = None


class Replier:
    def __init__(self, services: Services, me: discord.abc.User) -> None:
        self.services = services
        self.settings = services.settings
        self.engine = services.engine
        self.me = me

    async def answer(self, message: discord.Message, trigger: Trigger) -> Outcome:
        """Reply to `message`. On failure an apology is shown and the error re-raised for logging."""
        text, truncated = truncate(prompt_text(message, self.me), self.settings.max_input_chars)
        channel, reference = await self._target(message, trigger, text)
        stream = ReplyStream(ChannelSink(channel, reference), interval=self.settings.edit_interval_s)
        try:
            place = place_of(channel, message.author.id)
            persona = await self.services.persona_at(place)
            stream.sink = await self._sink(channel, persona, reference)
            if not text:
                return await self._greet(stream, message, persona, channel)
            if truncated:
                stream.header = TRUNCATED.format(limit=self.settings.max_input_chars)
            request = self._request(message, channel, place, persona, text)
            async with typing_indicator(channel):
                finished = await self.services.in_flight.run(
                    message.id, request.conversation_id, request.speaker.id, self._generate(stream, request)
                )
            ids = await stream.finish(finished.text)
        except ReplyStopped as stopped:
            log.info("%s", stopped)
            await self._withdraw(stream)
            return Outcome("stopped")
        except ModelBusy as busy:  # a full generation queue is load, not a failure: no traceback
            log.warning("message %s: %s", message.id, busy)
            await self._apologize(stream, busy)
            return Outcome("busy", tuple(stream.message_ids))
        except Exception as exc:
            await self._apologize(stream, exc)
            raise
        await self._link(ids, finished.reply_id)
        if self.settings.rating_reactions:
            await self._hint(channel, ids[-1])
        return Outcome("replied", tuple(ids), finished.reply_id)

    async def _target(
        self, message: discord.Message, trigger: Trigger, text: str
    ) -> tuple[discord.abc.Messageable, discord.Message | None]:
        """Where to answer: the message's channel, or a new thread on it (auto_thread)."""
        if (
            self.settings.auto_thread
            and trigger is Trigger.MENTION
            and isinstance(message.channel, discord.TextChannel)
        ):
            title = (text.splitlines() or [""])[0][:80].strip() or "Conversation"
            try:
                return await message.create_thread(name=title, auto_archive_duration=1440), None
            except discord.HTTPException as exc:
                log.warning("cannot open a thread in channel %s (%s); answering in place", message.channel.id, exc)
        return message.channel, message

    async def _sink(
        self, channel: discord.abc.Messageable, persona: Persona, reference: discord.Message | None
    ) -> MessageSink:
        if persona.identity is not None:
            sink = await self.services.webhooks.sink_for(channel, persona)
            if sink is not None:
                return sink
        return ChannelSink(channel, reference)

    def _request(
        self, message: discord.Message, channel: object, place: Place, persona: Persona, text: str
    ) -> ChatRequest:
        context = {
            "discord_message_id": str(message.id),
            "discord_channel_id": str(getattr(channel, "id", message.channel.id)),
            "discord_user_id": str(message.author.id),
        }
        if place.guild_id is not None:
            context["discord_guild_id"] = str(place.guild_id)
        return ChatRequest(
            conversation_id=place.conversation_id,
            speaker=Speaker(user_id(message.author), message.author.display_name),
            text=text,
            persona_id=persona.id,
            channel_name=channel_label(channel),
            server_name=message.guild.name if message.guild is not None else "",
            context=context,
        )

    async def _generate(self, stream: ReplyStream, request: ChatRequest) -> ReplyFinished:
        finished: ReplyFinished | None = None
        events = self.engine.stream(request)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    await stream.push(event.text)
                else:
                    finished = event
        if finished is None:
            raise ModelError("the reply stream ended without a reply")
        return finished

    async def _greet(self, stream: ReplyStream, message: discord.Message, persona: Persona, channel: object) -> Outcome:
        """A bare mention: the persona's greeting (not a model call)."""
        greeting = await self.engine.greeting(persona, message.author.display_name, channel_label(channel))
        ids = await stream.finish(greeting or NUDGE)
        return Outcome("greeted", tuple(ids))

    async def _apologize(self, stream: ReplyStream, exc: BaseException) -> None:
        try:
            await stream.fail(apology_for(exc))
        except discord.HTTPException:
            log.warning("could not post an apology", exc_info=True)

    async def _withdraw(self, stream: ReplyStream) -> None:
        """Take back the part of a stopped reply that was already shown."""
        try:
            await stream.withdraw()
        except discord.HTTPException:
            log.warning("could not delete a stopped reply", exc_info=True)

    async def _link(self, message_ids: list[int], reply_id: str) -> None:
        """Remember which reply the messages show, so reactions on them rate it (journaled if Redis is down)."""
        try:
            await self.engine.link_shown(reply_id, [external_id(m) for m in message_ids])
        except StoreError as exc:
            log.warning("reply %s was shown but cannot be rated: %s", reply_id, exc)

    async def _hint(self, channel: discord.abc.Messageable, message_id: int) -> None:
        partial = getattr(channel, "get_partial_message", None)
        if partial is None:
            return
        try:
            for emoji in RATING_HINTS:
                await partial(message_id).add_reaction(emoji)
        except discord.HTTPException as exc:
            log.debug("cannot add rating hints in channel %s: %s", getattr(channel, "id", "?"), exc)
