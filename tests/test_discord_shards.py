"""Two real bot processes (`python -m bot discord`, one shard each) on one fake Discord and one
Redis: each message is answered once, and the limits and cooldowns are shared."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.discord_fake import FakeDiscord, SentMessage
from tests.discord_fake.openai_server import DONE, ScriptedOpenAI, reply_to
from tests.discord_fake.payloads import Json
from tests.discord_fake.process import bot_env, running_bots

START_S = 90.0  # two Python processes starting on a shared 2-core machine: a generous safety net


@pytest.fixture
async def model() -> AsyncIterator[ScriptedOpenAI]:
    server = ScriptedOpenAI(pieces=4, reply_s=0.2)
    await server.start()
    yield server
    await server.close()


def answers(fake: FakeDiscord, message: Json) -> list[SentMessage]:
    return [m for m in fake.sent if m.reference_id == int(message["id"]) and not m.deleted]


def answered(fake: FakeDiscord, message: Json) -> bool:
    return any(m.content.endswith(DONE) or m.content.startswith("-#") for m in answers(fake, message))


async def test_two_processes_answer_each_message_once_and_share_limits(
    tmp_path: Path, redis_url: str, model: ScriptedOpenAI
) -> None:
    fake = FakeDiscord()
    guilds = [fake.add_guild(f"server {k}", shard=(k, 2)) for k in range(2)]
    channels = [fake.add_channel(g, "general") for g in guilds]
    users = [fake.add_user(f"user{i}") for i in range(6)]
    for guild in guilds:
        for user in users:
            fake.join(guild, user)
    personas = tmp_path / "personas"
    personas.mkdir()
    shutil.copy(REPO / "personas" / "assistant.yaml", personas)
    await fake.start()
    envs = [
        bot_env(fake, redis_url=redis_url, model_url=model.url, personas_dir=personas, data_dir=tmp_path / f"data{k}",
                shard_ids=[k], shard_count=2, max_replies=1, user_cooldown_s=3600, rating_reactions=False)
        for k in range(2)
    ]  # fmt: skip
    try:
        async with running_bots(envs, tmp_path) as bots:
            await fake.wait_until(lambda: fake.shard_count == 2 and fake.live_shards() == {0, 1}, within=START_S)
            # Six users at once, three in each process's server; one model call at a time in all.
            messages = [
                fake.user_message(u, channels[i % 2], f"question {i}", mention_bot=True) for i, u in enumerate(users)
            ]
            for message in messages:
                await fake.dispatch_message(message)
            await fake.wait_until(lambda: all(answered(fake, m) for m in messages), within=START_S)
            for i, message in enumerate(messages):
                [reply] = answers(fake, message)
                # Who said what: once several people speak in a channel, turns carry their names.
                said = (reply_to(f"question {i}"), reply_to(f"user{i}: question {i}"))
                assert reply.content in said, bots[i % 2].log()[-3000:]
            assert model.requests == 6
            assert model.max_in_flight == 1, "max_replies=1 holds across both processes"
            # The same user, again, in the other process's server: the cooldown is shared too.
            again = fake.user_message(users[0], channels[1], "me again", mention_bot=True)
            await fake.dispatch_message(again)
            [notice] = await fake.wait_until(lambda: answers(fake, again), within=START_S)
            assert "faster than I answer them" in notice.content
            assert model.requests == 6
            exit_codes = [await bot.stop() for bot in bots]
            assert all(code in (0, 130) for code in exit_codes), [b.log()[-2000:] for b in bots]
    finally:
        await fake.close()
