"""The one door to the engine: an Inbound (and the persona chosen for it) becomes a ChatRequest,
and the engine's stream goes to the reply's stream."""

from __future__ import annotations

import contextlib

from bot.domain.messages import ChatRequest
from bot.domain.persona import Persona
from bot.engine import ChatEngine, ReplyFinished, TextDelta
from bot.errors import ModelError
from bot.transports.discord.inbound import Inbound
from bot.transports.discord.streaming import ReplyStream


def request_for(inbound: Inbound, persona: Persona) -> ChatRequest:
    place = inbound.place
    context = {
        "discord_message_id": str(inbound.message_id),
        "discord_channel_id": str(place.here),
        "discord_user_id": str(place.user_id),
    }
    if place.guild_id is not None:
        context["discord_guild_id"] = str(place.guild_id)
    return ChatRequest(
        conversation_id=inbound.conversation_id,
        speaker=inbound.speaker,
        text=inbound.text,
        persona_id=persona.id,
        channel_name=inbound.channel_label,
        server_name=inbound.server_name,
        context=context,
        group=not place.is_dm,
    )


async def generate(engine: ChatEngine, request: ChatRequest, stream: ReplyStream) -> ReplyFinished:
    """Run the engine's stream into `stream` (streamed edits); the finished reply is not shown yet."""
    finished: ReplyFinished | None = None
    events = engine.stream(request)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                await stream.push(event.text)
            else:
                finished = event
    if finished is None:
        raise ModelError("the reply stream ended without a reply")
    return finished
