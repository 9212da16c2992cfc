"""Answer messages: read each one at the edge (see `inbound`), then hand it to the message path
(see `handling`). Deleting a message stops its reply, whether it waits in line or is being written.

Each handled message ends with a `persona_handled(message, outcome)` event (see `Outcome`),
which tests and extensions can wait for.
"""

from __future__ import annotations

import logging

import discord
from discord.ext import commands

from bot.transports.discord.handling import MessageHandler, Outcome
from bot.transports.discord.inbound import read_message
from bot.transports.discord.services import Services

log = logging.getLogger(__name__)


class ChatCog(commands.Cog):
    def __init__(self, bot: discord.Client, services: Services) -> None:
        self.bot = bot
        self.services = services
        self.handler = MessageHandler(services, bot)

    async def cog_unload(self) -> None:
        await self.services.queue.close()

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
        inbound = await read_message(message, me, self.services.settings, self.services.is_our_reply)
        if inbound is None:
            return Outcome("ignored")
        return await self.handler.handle(inbound)
