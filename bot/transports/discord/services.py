"""What the cogs share: the engine, settings, the shared state (ports) and the reply queue."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import discord

from bot.domain.persona import Persona
from bot.engine import ChatEngine
from bot.errors import PersonaNotFound, StoreError
from bot.ports import DiscordState
from bot.refine.store import RefineStore
from bot.settings import DiscordSettings
from bot.transports.discord.ids import external_id, user_id
from bot.transports.discord.inflight import InFlight
from bot.transports.discord.placement import PersonaPlacements
from bot.transports.discord.places import Place
from bot.transports.discord.queue import ReplyQueue
from bot.transports.discord.webhooks import WebhookDirectory

log = logging.getLogger(__name__)

__all__ = ["Services", "external_id", "user_id"]


@dataclass
class Services:
    engine: ChatEngine
    settings: DiscordSettings
    state: DiscordState
    placements: PersonaPlacements
    webhooks: WebhookDirectory
    in_flight: InFlight
    queue: ReplyQueue
    refine: RefineStore | None = None  # refine status for /feedback

    @classmethod
    def build(
        cls,
        engine: ChatEngine,
        state: DiscordState,
        settings: DiscordSettings,
        client: discord.Client,
        refine: RefineStore | None = None,
    ) -> Services:
        return cls(
            engine=engine,
            settings=settings,
            state=state,
            placements=PersonaPlacements(state.placements),
            webhooks=WebhookDirectory(client),
            in_flight=InFlight(),
            queue=ReplyQueue(state.slots, total=settings.max_replies, per_group=settings.max_replies_per_server),
            refine=refine,
        )

    async def persona_at(self, place: Place) -> Persona:
        """The persona speaking at `place`; a choice naming a removed persona falls back."""
        found = await self.placements.resolve(place)
        if found is not None:
            try:
                return self.engine.personas.get(found[0])
            except PersonaNotFound:
                log.warning("persona %r set for %s %s is not loaded; using the default", found[0], found[1], place)
        return self.engine.personas.get(self.engine.default_persona)

    async def reply_id_of(self, message_id: int) -> str | None:
        """The reply shown by a Discord message, or None when it is not one of the bot's replies."""
        return await self.engine.feedback.resolve(external_id(message_id))

    async def is_our_reply(self, message_id: int) -> bool:
        try:
            async with asyncio.timeout(self.settings.state_timeout_s):
                return await self.reply_id_of(message_id) is not None
        except (StoreError, TimeoutError) as exc:
            log.warning("cannot look up message %s: %s", message_id, exc)
            return False
