"""`python -m bot discord`: check the token, build the runtime, run the bot until stopped."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import discord
from discord.http import HTTPClient

from bot.errors import ConfigError
from bot.settings import Settings
from bot.transports.discord.endpoints import point_at

log = logging.getLogger(__name__)

TOKEN_HELP = "BOT_DISCORD__TOKEN (Developer Portal → your app → Bot → Reset Token)"


def token_of(settings: Settings) -> str:
    secret = settings.discord.token
    token = secret.get_secret_value().strip() if secret is not None else ""
    if not token:
        raise ConfigError(f"no Discord bot token: set {TOKEN_HELP}")
    return token


async def check_token(token: str, api_base: str) -> None:
    """Log in over REST once, before loading models, so a bad token fails fast and clearly."""
    http = HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(token)
    except discord.LoginFailure:
        raise ConfigError(f"Discord rejected the bot token in {TOKEN_HELP}") from None
    except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
        raise ConfigError(f"cannot reach the Discord API at {api_base}: {exc}") from None
    finally:
        await http.close()


async def run(settings: Settings) -> None:
    """Run the Discord bot until it is stopped; configuration problems raise ConfigError."""
    from bot.app import build_runtime
    from bot.transports.discord.client import create_bot

    token = token_of(settings)
    point_at(settings.discord)
    await check_token(token, settings.discord.api_base)
    log.info("Discord accepted the token; loading personas, Redis and the model")
    async with build_runtime(settings) as runtime:
        bot = create_bot(runtime)
        log.info("connecting to the Discord gateway")
        try:
            async with bot:
                await bot.start(token)
        except discord.LoginFailure:
            raise ConfigError(f"Discord rejected the bot token in {TOKEN_HELP}") from None
        except discord.PrivilegedIntentsRequired:
            raise ConfigError(
                "Discord refused the Message Content intent: enable it in the Developer Portal (Bot → Privileged "
                "Gateway Intents → Message Content Intent)"
            ) from None
