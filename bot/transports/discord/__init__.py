"""The Discord transport: a discord.py bot (cogs + slash commands) on top of the chat engine.

    await run(settings)                    # `python -m bot discord`
    bot = create_bot(runtime)              # for tests and embedding; then `await bot.start(token)`

Modules: client (the bot), cogs/ (chat, ratings, persona and admin commands), replier (one
answer), streaming (throttled edits), sinks (channel or webhook), places (conversations and
triggers), placement (persona per place), throttling, seen (redelivery dedupe), errors.
"""

from bot.transports.discord.client import PersonaBot, create_bot
from bot.transports.discord.runner import run

__all__ = ["PersonaBot", "create_bot", "run"]
