"""/forget (this conversation), /forget-me (privacy: everything about the caller), /feedback."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.transports.discord.cogs.personas import interaction_place
from bot.transports.discord.feedback_summary import feedback_text
from bot.transports.discord.permissions import require_admin
from bot.transports.discord.services import Services, user_id
from bot.transports.discord.sinks import NO_PINGS


class AdminCommands(commands.Cog):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine = services.engine

    @app_commands.command(name="forget", description="Forget the conversation in this channel, thread or DM")
    async def forget(self, interaction: discord.Interaction) -> None:
        require_admin(interaction, self.services.settings.admin_role_ids, dm_ok=True)
        conversation_id = interaction_place(interaction).conversation_id
        # A reply still being generated would write the conversation back when it finishes.
        await self.services.in_flight.stop_conversation(conversation_id)
        await self.engine.reset(conversation_id)
        await interaction.response.send_message(
            "Done: I've forgotten the conversation here.", allowed_mentions=NO_PINGS
        )

    @app_commands.command(name="forget-me", description="Delete everything the bot stored about you, everywhere")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.services.in_flight.stop_user(user_id(interaction.user))
        messages, records = await self.engine.forget_user(user_id(interaction.user))
        await interaction.followup.send(
            f"Done: deleted {messages} remembered messages (yours and my answers to you) "
            f"and {records} reply records and ratings of yours.",
            ephemeral=True, allowed_mentions=NO_PINGS,
        )  # fmt: skip

    @app_commands.command(name="feedback", description="Rating summary of the persona speaking here")
    async def feedback(self, interaction: discord.Interaction) -> None:
        require_admin(interaction, self.services.settings.admin_role_ids, dm_ok=False)
        persona = await self.services.persona_at(interaction_place(interaction))
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await feedback_text(self.engine.feedback, persona, refine=self.services.refine)
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
