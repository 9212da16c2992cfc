"""👍/👎 reactions on the bot's replies are ratings, stored with the console's in the feedback log.

One rating per user per reply: a new reaction replaces the user's rating; removing the reaction
that matches the stored rating withdraws it. Reactions by bots (the bot included) and reactions
on other messages are ignored. Each handled reaction ends with `persona_rated(payload, outcome)`,
outcome one of "rated", "withdrawn", "ignored" or "queued".

A reaction is handed to the engine as it arrived (the message it names, the time it arrived):
which reply the message shows, and whether a removal withdraws the rating, is decided where the
rating is applied, atomically. So a reaction during a Redis outage is journaled ("queued") and
rated correctly when Redis is back, after the reactions that came before it.
"""

from __future__ import annotations

import logging
import time

import discord
from discord.ext import commands

from bot.engine import ConversationLocks
from bot.transports.discord.services import Services, external_id, user_id

log = logging.getLogger(__name__)

RATINGS = {"\N{THUMBS UP SIGN}": 1, "\N{THUMBS DOWN SIGN}": -1}
_SKIN_TONES = "".join(chr(c) for c in range(0x1F3FB, 0x1F400))


def rating_of(emoji: discord.PartialEmoji) -> int | None:
    """+1 for 👍, -1 for 👎 (any skin tone), None for any other emoji."""
    if emoji.id is not None or not emoji.name:
        return None
    return RATINGS.get(emoji.name.rstrip(_SKIN_TONES + "\ufe0f"))


class RatingsCog(commands.Cog):
    def __init__(self, bot: discord.Client, services: Services) -> None:
        self.bot = bot
        self.services = services
        self._locks = ConversationLocks()  # one (message, user)'s reactions reach the store in arrival order

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._handle(payload, added=True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._handle(payload, added=False)

    async def _handle(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        arrived = time.time()  # Discord's reaction events carry no time of their own
        outcome = "ignored"
        try:
            outcome = await self._rate(payload, added=added, at=arrived)
        finally:
            self.bot.dispatch("persona_rated", payload, outcome)

    async def _rate(self, payload: discord.RawReactionActionEvent, *, added: bool, at: float) -> str:
        value = rating_of(payload.emoji)
        if value is None or self._by_a_bot(payload):
            return "ignored"
        async with self._locks.get(f"{payload.message_id}:{payload.user_id}"):
            outcome = await self.services.engine.rate_message(
                external_id(payload.message_id),
                user_id(payload.user_id),
                value,
                removed=not added,
                at=at,
                context=self._context(payload),
            )
        if outcome == "queued":
            log.info("reaction on message %s kept in the journal until Redis is back", payload.message_id)
        return outcome

    def _by_a_bot(self, payload: discord.RawReactionActionEvent) -> bool:
        if self.bot.user is not None and payload.user_id == self.bot.user.id:
            return True
        if payload.member is not None:
            return payload.member.bot
        user = self.bot.get_user(payload.user_id)
        return user is not None and user.bot

    @staticmethod
    def _context(payload: discord.RawReactionActionEvent) -> dict[str, str]:
        context = {
            "source": "discord",
            "discord_message_id": str(payload.message_id),
            "discord_channel_id": str(payload.channel_id),
            "discord_user_id": str(payload.user_id),
        }
        if payload.guild_id is not None:
            context["discord_guild_id"] = str(payload.guild_id)
        return context
