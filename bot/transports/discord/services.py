"""What the cogs share: the engine, settings, and the Discord-side stores and limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import discord
from redis.exceptions import RedisError

from bot.domain.persona import Persona
from bot.engine import ChatEngine
from bot.errors import PersonaNotFound, StoreError
from bot.redis_conn import RedisHandle
from bot.settings import DiscordSettings
from bot.transports.discord.inflight import InFlight
from bot.transports.discord.placement import PersonaPlacements
from bot.transports.discord.places import Place
from bot.transports.discord.seen import SeenMessages
from bot.transports.discord.sinks import WebhookDirectory
from bot.transports.discord.throttling import ChannelGate, Cooldowns

log = logging.getLogger(__name__)


def external_id(message_id: int) -> str:
    """How the feedback log names a Discord message showing a reply."""
    return f"discord:msg:{message_id}"


def user_id(user: discord.abc.Snowflake | int) -> str:
    return f"discord:{user if isinstance(user, int) else user.id}"


@dataclass
class Services:
    engine: ChatEngine
    settings: DiscordSettings
    placements: PersonaPlacements
    seen: SeenMessages
    cooldowns: Cooldowns
    gate: ChannelGate
    webhooks: WebhookDirectory
    in_flight: InFlight

    @classmethod
    def build(
        cls, engine: ChatEngine, redis: RedisHandle, settings: DiscordSettings, client: discord.Client
    ) -> Services:
        return cls(
            engine=engine,
            settings=settings,
            placements=PersonaPlacements(redis),
            seen=SeenMessages(redis),
            cooldowns=Cooldowns(settings.user_cooldown_s),
            gate=ChannelGate(settings.channel_concurrency, settings.channel_queue),
            webhooks=WebhookDirectory(client),
            in_flight=InFlight(),
        )

    async def persona_at(self, place: Place) -> Persona:
        """The persona speaking at `place`; an override naming a removed persona falls back."""
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
            return await self.reply_id_of(message_id) is not None
        except (StoreError, RedisError) as exc:
            log.warning("cannot look up message %s: %s", message_id, exc)
            return False
