"""Point discord.py at the configured REST API and gateway (Discord, or a compatible server).

discord.py reads its endpoints from class attributes only (`Route.BASE` for REST and
`DiscordWebSocket.DEFAULT_GATEWAY` for the gateway), so this sets them, for the whole process.
"""

from __future__ import annotations

import discord.http
import yarl
from discord.gateway import DiscordWebSocket

from bot.settings import DiscordSettings

DISCORD_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY


def point_at(settings: DiscordSettings) -> None:
    discord.http.Route.BASE = settings.api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url) if settings.gateway_url else DISCORD_GATEWAY
