"""The Discord transport: a discord.py bot (cogs + slash commands) on top of the chat engine.

    await run(settings)                        # `python -m bot discord`
    bot = create_bot(runtime, state)           # tests, embedding (state: bot.app.build_discord_state)

A message's path, each step working on the value the one before made:

    cogs/chat      on_message → inbound.read_message: the Discord message, read once → Inbound
    handling       claim, cooldown (ports: MessageClaims, UserPacing), then waits its turn in
    queue, lanes   the reply queue (fair between users; slots leased through ReplySlots)
    answering      the one door to the engine: ChatRequest → engine.stream
    streaming      → ReplyStream (throttled edits, waiting notices) → outlet: the one sink,
    outlet, sinks  webhooks   chosen once: a new thread, the persona's webhook or the channel

Also: client (the bot, sharding), cogs/ (ratings, persona and admin commands), places (where a
message was said, whether to answer), placement (persona per place), inflight (stopping replies),
notices and errors (what users see), ids, endpoints, runner.
"""

from bot.transports.discord.client import PersonaBot, create_bot
from bot.transports.discord.runner import run

__all__ = ["PersonaBot", "create_bot", "run"]
