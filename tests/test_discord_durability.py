"""Reactions while Redis is down, end to end: the real bot on the fake Discord, a real redis-server
killed under it, and the bot itself restarted before Redis comes back. Every reaction counts."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from pydantic import SecretStr

from bot.redis_conn import EmbeddedRedis
from bot.settings import Settings
from tests.conftest import free_port
from tests.discord_fake.harness import DiscordHarness

UP, DOWN = "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"


async def test_reactions_during_an_outage_are_kept_and_replayed_after_a_bot_restart(
    settings: Settings, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    server.start()
    redis = settings.redis.model_copy(update={"url": SecretStr(server.url), "socket_timeout": 0.5})
    journal = settings.journal.model_copy(update={"retry_max_s": 0.2})
    try:
        async with DiscordHarness.running(settings.model_copy(update={"redis": redis, "journal": journal})) as h:
            alice, bob = f"discord:{h.alice['id']}", f"discord:{h.bob['id']}"
            _, first = await h.say(h.alice, h.general, "rate me while it is down", mention_bot=True)
            _, second = await h.say(h.bob, h.general, "me too", mention_bot=True)
            [one], [two] = h.reply_of(first), h.reply_of(second)
            assert await h.react(h.alice, one.id, UP) == "rated"
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            during = [
                await h.react(h.alice, one.id, UP, add=False),  # alice takes her 👍 back...
                await h.react(h.alice, one.id, DOWN),  # ...and gives a 👎
                await h.react(h.bob, one.id, DOWN),
                await h.react(h.bob, one.id, DOWN, add=False),  # bob withdraws his
                await h.react(h.alice, two.id, DOWN),
                await h.react(h.alice, two.id, UP),  # alice switches to 👍 on the second reply
                await h.react(h.alice, two.id, DOWN, add=False),  # removing the 👎 leaves the 👍
                await h.react(h.bob, two.id, UP),
            ]
            assert during == ["queued"] * 8, "kept, not lost, and the user's reaction is not refused"
            await h.stop_bot()  # the bot restarts during the outage: the journal is on disk
            server.start()
            await h.start_bot()  # and replays it at start-up
            assert h.runtime.replayer is not None
            async with asyncio.timeout(30):
                await h.runtime.replayer.settled()
            assert await h.ratings_of(first) == {alice: -1}
            assert await h.ratings_of(second) == {alice: 1, bob: 1}
            [counters] = (await h.runtime.feedback.stats()).values()
            assert (counters["replies"], counters["up"], counters["down"]) == (2, 2, 1), "each event counted once"
            assert await h.react(h.bob, one.id, UP) == "rated", "and the bot rates as usual again"
    finally:
        server.stop()
