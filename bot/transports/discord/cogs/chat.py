"""Answer messages: decide whether to, then apply the dedupe, cooldown and channel limits.

Deleting a message whose reply is still being generated stops that reply (see `inflight`).

Each handled message ends with a `persona_handled(message, outcome)` event (see `Outcome`),
which tests and extensions can wait for.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.transports.discord.errors import BUSY
from bot.transports.discord.places import trigger_for
from bot.transports.discord.replier import Outcome, Replier
from bot.transports.discord.services import Services
from bot.transports.discord.sinks import NO_PINGS
from bot.transports.discord.throttling import Busy

log = logging.getLogger(__name__)

COOLDOWN_EMOJI = "\N{HOURGLASS WITH FLOWING SAND}"
BUSY_NOTICE_S = 10.0


class ChatCog(commands.Cog):
    def __init__(self, bot: discord.Client, services: Services) -> None:
        self.bot = bot
        self.services = services

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        try:
            outcome = await self._handle(message)
        except Exception:
            self.bot.dispatch("persona_handled", message, Outcome("failed"))
            raise  # to the bot's on_error, which logs it with the message's ids
        self.bot.dispatch("persona_handled", message, outcome)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.services.in_flight.stop_messages([payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self.services.in_flight.stop_messages(payload.message_ids)

    async def _handle(self, message: discord.Message) -> Outcome:
        me = self.bot.user
        if me is None:
            return Outcome("ignored")
        trigger = await trigger_for(message, me, self.services.settings, self.services.is_our_reply)
        if trigger is None:
            return Outcome("ignored")
        if not await self.services.seen.claim(message.id):
            log.info("message %s was delivered again; already handled", message.id)
            return Outcome("duplicate")
        if not self.services.cooldowns.allow(message.author.id):
            await self._react(message, COOLDOWN_EMOJI)
            return Outcome("cooldown")
        try:
            async with self.services.gate.slot(message.channel.id):
                return await Replier(self.services, me).answer(message, trigger)
        except Busy:
            await message.channel.send(
                BUSY, reference=message.to_reference(fail_if_not_exists=False),
                allowed_mentions=NO_PINGS, delete_after=BUSY_NOTICE_S,
            )  # fmt: skip
            return Outcome("busy")

    @staticmethod
    async def _react(message: discord.Message, emoji: str) -> None:
        try:
            await message.add_reaction(emoji)
        except discord.HTTPException as exc:
            log.debug("cannot react to message %s: %s", message.id, exc)
