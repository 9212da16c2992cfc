"""The bot: a discord.py `AutoShardedBot` wired to the chat engine through cogs.

With `shard_ids` (and `shard_count`) a process runs only those shards, so several processes
share one bot; they share its state (claims, cooldowns, limits, placements) through Redis.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.ports import DiscordState
from bot.transports.discord.cogs.admin import AdminCommands
from bot.transports.discord.cogs.chat import ChatCog
from bot.transports.discord.cogs.personas import PersonaCommands
from bot.transports.discord.cogs.ratings import RatingsCog
from bot.transports.discord.endpoints import point_at
from bot.transports.discord.errors import log_event_error, on_app_command_error
from bot.transports.discord.services import Services
from bot.transports.discord.sinks import NO_PINGS

if TYPE_CHECKING:
    from bot.app import Runtime

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0
#: View Channels, Send Messages (and in threads), Read Message History, Add Reactions, Create Public
#: Threads, Manage Webhooks: what the README's invite link grants.
INVITE_PERMISSIONS = 309774584896


def invite_url(application_id: int | None) -> str:
    client_id = application_id if application_id is not None else "APP_ID"
    return (f"https://discord.com/oauth2/authorize?client_id={client_id}&scope=bot+applications.commands"
            f"&permissions={INVITE_PERMISSIONS}")


def intents() -> discord.Intents:
    """What the bot needs: servers, messages (with content: a privileged intent), reactions."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.guild_reactions = True
    wanted.dm_reactions = True
    wanted.message_content = True
    return wanted


class PersonaBot(commands.AutoShardedBot):
    def __init__(self, runtime: Runtime, state: DiscordState, **options: Any) -> None:
        # The bot never joins voice: discord.py's start-up warnings about voice libraries are noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        settings = runtime.settings.discord
        options.setdefault("shard_count", settings.shard_count)
        if settings.shard_ids is not None:
            options.setdefault("shard_ids", settings.shard_ids)
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents(),
            allowed_mentions=NO_PINGS,  # the default for anything sent without its own setting
            help_command=None,
            **options,
        )
        self.runtime = runtime
        self.settings = settings
        self._told_invite = False
        self.services = Services.build(runtime.engine, state, settings, self, refine=runtime.refine)

    async def setup_hook(self) -> None:
        await self.add_cog(ChatCog(self, self.services))
        await self.add_cog(RatingsCog(self, self.services))
        await self.add_cog(PersonaCommands(self.services))
        await self.add_cog(AdminCommands(self.services))
        self.tree.error(on_app_command_error)
        if self.settings.sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d slash commands", len(synced))

    async def launch_shards(self) -> None:
        # With a configured gateway URL, only ask the API for the shard count (its URL would win).
        if self.shard_count is None and self.settings.gateway_url:
            self.shard_count, _, _ = await self.http.get_bot_gateway()
        await super().launch_shards()

    async def on_ready(self) -> None:
        if self.user is not None:
            self.runtime.engine.bot_name = self.user.display_name  # the {bot_name} prompt variable
        log.info("connected as %s (%s) to %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds))
        if not self.guilds and not self._told_invite:
            self._told_invite = True
            log.warning("%s is in no server yet; invite it with %s", self.user, invite_url(self.application_id))

    async def on_message(self, message: discord.Message, /) -> None:
        """No prefix commands: ChatCog answers messages, slash commands do the rest."""

    async def close(self) -> None:
        """Shut down without leaving anyone hanging: messages still in line are told the bot is
        restarting, replies being written get a moment to finish (see InFlight.shut_down)."""
        if not self.is_closed():
            await self.services.in_flight.shut_down(SHUTDOWN_GRACE_S)
        await super().close()

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        log_event_error(event_method, args)


def create_bot(runtime: Runtime, state: DiscordState | None = None, **options: Any) -> PersonaBot:
    """A bot for `runtime`, pointed at the configured API and gateway; start it with `bot.start(token)`.

    `state` is the shared Discord state (claims, cooldowns, reply slots, placements); by default the
    composition root builds it for `runtime` (`bot.app.build_discord_state`). `options` go to
    discord.py's bot (e.g. `guild_ready_timeout`).
    """
    if state is None:
        from bot.app import build_discord_state

        state = build_discord_state(runtime)
    point_at(runtime.settings.discord)
    return PersonaBot(runtime, state, **options)
