"""What users see when something fails, and the error sinks that log failures with context.

Two surfaces, one sink each: `log_event_error` for gateway events (the bot's `on_error`) and
`on_app_command_error` for slash commands. Users get a short text; the log gets the detail.
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.errors import BotError, ModelBusy, ModelError, PersonaNotFound, PromptTooLong, StoreError
from bot.transports.discord.permissions import NotAllowed

log = logging.getLogger("bot.transports.discord")

APOLOGY = "-# Sorry, something went wrong and I couldn't answer. Please try again in a moment."
APOLOGIES: list[tuple[type[BaseException], str]] = [
    (ModelBusy, "-# Sorry, I'm answering too many messages right now. Please try again in a moment."),
    (ModelError, "-# Sorry, I couldn't come up with a reply just now. Please try again in a moment."),
    (StoreError, "-# Sorry, my memory is unavailable right now. Please try again in a moment."),
    (PromptTooLong, "-# Sorry, that message is too long for me to read. Please shorten it."),
    (PersonaNotFound, "-# Sorry, the persona chosen here is not available. Ask an admin to `/persona set` one."),
]
TRUNCATED = "-# (Your message was long, so I read only its first {limit:,} characters.)\n"


def apology_for(exc: BaseException) -> str:
    return next((text for kind, text in APOLOGIES if isinstance(exc, kind)), APOLOGY)


def describe(obj: Any) -> str:
    """Ids of a message, interaction or raw event, for log lines (never content or tokens)."""
    parts = []
    for name in ("id", "message_id", "channel_id", "guild_id", "user_id"):
        value = getattr(obj, name, None)
        if isinstance(value, int):
            parts.append(f"{name}={value}")
    author = getattr(obj, "author", None) or getattr(obj, "user", None)
    if author is not None and hasattr(author, "id"):
        parts.append(f"user={author.id}")
    for name in ("channel", "guild"):
        related = getattr(obj, name, None)
        if related is not None and isinstance(getattr(related, "id", None), int) and not hasattr(obj, f"{name}_id"):
            parts.append(f"{name}={related.id}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def log_event_error(event: str, args: tuple[Any, ...]) -> None:
    """The gateway event sink: called from the bot's `on_error` inside the `except` block."""
    context = ", ".join(describe(a) for a in args) or "-"
    log.exception("error handling %s: %s", event, context)


def command_error_text(error: app_commands.AppCommandError) -> str:
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(cause, NotAllowed):
        return str(cause)
    if isinstance(cause, app_commands.CheckFailure):
        return "You can't use this command here."
    if isinstance(cause, PersonaNotFound):
        return f"There is no persona `{cause.persona_id}`. `/persona list` shows them."
    if isinstance(cause, StoreError):
        return "My storage is unavailable right now. Please try again in a moment."
    if isinstance(cause, BotError):
        return "Sorry, that didn't work. Please try again in a moment."
    return "Sorry, something went wrong running that command."


async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """The slash command sink: log with context, answer the caller ephemerally."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    name = interaction.command.qualified_name if interaction.command else "?"
    context = f"/{name} by user={interaction.user.id} guild={interaction.guild_id} channel={interaction.channel_id}"
    if isinstance(cause, app_commands.CheckFailure | PersonaNotFound):
        log.info("refused %s: %s", context, cause)
    else:
        log.error("command failed: %s", context, exc_info=cause)
    text = command_error_text(error)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
        else:
            await interaction.response.send_message(
                text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
            )
    except discord.HTTPException:
        log.warning("could not tell the user about the failure of %s", context, exc_info=True)
