"""The Discord transport's parts on their own: streaming, placements, startup errors."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from pathlib import Path

import discord
import discord.http
import pytest
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from pydantic import SecretStr
from typer.testing import CliRunner

from bot.coordination.placements import RedisPlacements
from bot.errors import ConfigError
from bot.redis_conn import RedisHandle
from bot.settings import DiscordSettings, Settings
from bot.transports.discord import run
from bot.transports.discord.cogs.personas import scope_target
from bot.transports.discord.cogs.ratings import rating_of
from bot.transports.discord.endpoints import DISCORD_GATEWAY, point_at
from bot.transports.discord.placement import PersonaPlacements, Scope
from bot.transports.discord.places import Place
from bot.transports.discord.streaming import EMPTY_REPLY, ReplyStream
from tests.discord_fake import FakeDiscord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    """A MessageSink keeping messages in a dict: what a channel would show."""

    def __init__(self) -> None:
        self.shown: dict[int, str] = {}
        self.calls: list[tuple[str, int]] = []
        self._next = 1

    async def send(self, content: str, *, first: bool) -> int:
        message_id, self._next = self._next, self._next + 1
        self.shown[message_id] = content
        self.calls.append(("send", message_id))
        return message_id

    async def edit(self, message_id: int, content: str) -> int:
        self.shown[message_id] = content
        self.calls.append(("edit", message_id))
        return message_id

    async def delete(self, message_id: int) -> None:
        del self.shown[message_id]
        self.calls.append(("delete", message_id))


# -- streaming ----------------------------------------------------------------------------------


async def test_stream_sends_at_once_then_edits_at_most_once_per_interval() -> None:
    sink, clock = RecordingSink(), Clock()
    stream = ReplyStream(sink, interval=1.0, clock=clock)
    await stream.push("Hello")
    assert sink.calls == [("send", 1)] and sink.shown[1] == "Hello"
    clock.now += 0.5
    await stream.push(" there")
    assert sink.calls == [("send", 1)], "no edit within the interval"
    clock.now += 0.6
    await stream.push(",")
    assert sink.calls == [("send", 1), ("edit", 1)] and sink.shown[1] == "Hello there,"
    assert await stream.finish("Hello there, friend.") == [1]
    assert sink.shown == {1: "Hello there, friend."}


async def test_stream_waits_for_visible_text_and_skips_unchanged_edits() -> None:
    sink = RecordingSink()
    stream = ReplyStream(sink, interval=1.0, clock=Clock())
    await stream.push("  \n")
    assert sink.calls == []
    await stream.push("Hi")
    await stream.finish("Hi")
    assert sink.calls == [("send", 1)]


async def test_stream_continues_in_new_messages_past_the_limit() -> None:
    sink, clock = RecordingSink(), Clock()
    stream = ReplyStream(sink, interval=1.0, clock=clock, limit=100)
    sentence = "This sentence has some words. "
    for _ in range(10):
        clock.now += 2
        await stream.push(sentence)
    ids = await stream.finish((sentence * 10).strip())
    assert len(ids) >= 3
    assert all(len(sink.shown[i]) <= 100 for i in ids)
    assert " ".join(sink.shown[i] for i in ids) == (sentence * 10).strip()


async def test_stream_deletes_messages_a_shorter_final_text_no_longer_needs() -> None:
    sink, clock = RecordingSink(), Clock()
    stream = ReplyStream(sink, interval=0.0, clock=clock, limit=50)
    await stream.push("word " * 30)
    assert len(sink.shown) >= 3
    assert await stream.finish("short") == [1]
    assert sink.shown == {1: "short"}


async def test_stream_header_failure_note_and_empty_reply() -> None:
    sink = RecordingSink()
    stream = ReplyStream(sink, interval=1.0, header="-# note\n", clock=Clock())
    await stream.push("partial answer")
    await stream.fail("-# Sorry.")
    assert sink.shown == {1: "-# note\npartial answer\n\n-# Sorry."}
    lonely = RecordingSink()
    await ReplyStream(lonely, interval=1.0, clock=Clock()).fail("-# Sorry.")
    assert lonely.shown == {1: "-# Sorry."}
    empty = RecordingSink()
    await ReplyStream(empty, interval=1.0, clock=Clock()).finish("")
    assert empty.shown == {1: EMPTY_REPLY}


# -- places, ratings, commands ------------------------------------------------------------------


def test_conversation_ids() -> None:
    assert Place(1, 2, None, 9).conversation_id == "discord:channel:2"
    assert Place(1, 2, 3, 9).conversation_id == "discord:thread:3"
    assert Place(None, 5, None, 9).conversation_id == "discord:dm:9"


def test_rating_emoji() -> None:
    assert rating_of(discord.PartialEmoji(name="👍")) == 1
    assert rating_of(discord.PartialEmoji(name="👎🏿")) == -1
    assert rating_of(discord.PartialEmoji(name="👍\ufe0f")) == 1
    assert rating_of(discord.PartialEmoji(name="🍎")) is None
    assert rating_of(discord.PartialEmoji(name="thumbsup", id=123)) is None, "custom emoji do not count"


def test_scope_targets() -> None:
    thread = Place(1, 2, 3, 9)
    assert scope_target(thread, None) == (Scope.THREAD, 3)
    assert scope_target(thread, "channel") == (Scope.CHANNEL, 2)
    assert scope_target(thread, "server") == (Scope.SERVER, 1)
    assert scope_target(Place(None, 5, None, 9), "here") == (Scope.CHANNEL, 5)
    with pytest.raises(discord.app_commands.CheckFailure):
        scope_target(Place(None, 5, None, 9), "server")


async def test_placements_most_specific_wins(redis_handle: RedisHandle) -> None:
    placements = PersonaPlacements(RedisPlacements(redis_handle))
    place = Place(1, 2, 3, 9)
    assert await placements.resolve(place) is None
    await placements.set(Scope.SERVER, 1, "terse")
    assert await placements.resolve(place) == ("terse", Scope.SERVER)
    await placements.set(Scope.CHANNEL, 2, "captain")
    await placements.set(Scope.THREAD, 3, "assistant")
    assert await placements.resolve(place) == ("assistant", Scope.THREAD)
    assert await placements.resolve(Place(1, 2, 4, 9)) == ("captain", Scope.CHANNEL)
    assert await placements.clear(Scope.THREAD, 3) and not await placements.clear(Scope.THREAD, 3)
    assert await placements.resolve(place) == ("captain", Scope.CHANNEL)


def test_the_transport_reaches_stores_only_through_the_engine_and_ports() -> None:
    """One door: no redis-py, no Redis store, no concrete coordination class in bot/transports."""
    forbidden = ("redis", "bot.redis_conn", "bot.coordination", "bot.memory", "bot.feedback.redis_log")
    transports = Path(__file__).resolve().parent.parent / "bot" / "transports"
    for file in transports.rglob("*.py"):
        tree = ast.parse(file.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        bad = [m for m in names if any(m == f or m.startswith(f + ".") for f in forbidden)]
        assert not bad, f"{file.name} imports {bad}"


# -- the fake Discord itself ----------------------------------------------------------------------


async def test_the_fake_serves_a_plain_discord_py_bot() -> None:
    """The fake speaks enough Discord for an unsharded commands.Bot: READY, GUILD_CREATE, messages."""
    fake = FakeDiscord()
    guild = fake.add_guild("plain")
    channel = fake.add_channel(guild, "general")
    alice = fake.add_user("alice")
    fake.join(guild, alice)
    await fake.start()
    point_at(DiscordSettings(api_base=fake.api_base, gateway_url=fake.gateway_url))
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)

    @bot.listen()
    async def on_message(message: discord.Message) -> None:
        if not message.author.bot:
            await message.channel.send(f"echo: {message.content}", reference=message)

    task = asyncio.create_task(bot.start(fake.token))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 15)
        assert [g.name for g in bot.guilds] == ["plain"]
        await fake.dispatch_message(fake.user_message(alice, channel, "ping"))
        await fake.wait_until(lambda: fake.sent)
        assert [m.content for m in fake.sent] == ["echo: ping"]
        assert fake.unknown == [], "every route the bot used exists in the fake"
    finally:
        await bot.close()
        await task
        await fake.close()
        point_at(DiscordSettings())


# -- endpoints and startup ----------------------------------------------------------------------


def test_endpoints_follow_the_settings() -> None:
    try:
        point_at(DiscordSettings(api_base="http://127.0.0.1:9/api/v10/", gateway_url="ws://127.0.0.1:9/gw"))
        assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"
        assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/gw"
    finally:
        point_at(DiscordSettings())
    assert discord.http.Route.BASE == "https://discord.com/api/v10"
    assert DiscordWebSocket.DEFAULT_GATEWAY == DISCORD_GATEWAY


async def test_run_without_a_token_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="no Discord bot token: set BOT_DISCORD__TOKEN"):
        await run(settings)


async def test_run_with_a_rejected_token_is_a_clear_error(settings: Settings) -> None:
    fake = FakeDiscord(token="the-right-token")
    await fake.start()
    discord_settings = settings.discord.model_copy(
        update={"token": SecretStr("a-wrong-token"), "api_base": fake.api_base, "gateway_url": fake.gateway_url}
    )
    try:
        with pytest.raises(ConfigError, match="Discord rejected the bot token") as caught:
            await run(settings.model_copy(update={"discord": discord_settings}))
        assert "a-wrong-token" not in str(caught.value)
        assert [r.path for r in fake.requests] == ["/users/@me"], "it failed before loading anything else"
    finally:
        await fake.close()
        point_at(DiscordSettings())


async def test_run_connects_and_stops_cleanly(settings: Settings) -> None:
    fake = FakeDiscord()
    fake.add_guild("a server")
    await fake.start()
    discord_settings = settings.discord.model_copy(
        update={"token": SecretStr(fake.token), "api_base": fake.api_base, "gateway_url": fake.gateway_url}
    )
    task = asyncio.create_task(run(settings.model_copy(update={"discord": discord_settings})))
    try:
        await fake.wait_until(lambda: fake.identifies and fake.commands)
        assert {c["name"] for c in fake.commands} >= {"persona", "forget"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fake.close()
        point_at(DiscordSettings())
    assert fake.unknown == []


async def test_run_without_the_message_content_intent_is_a_clear_error(settings: Settings) -> None:
    fake = FakeDiscord(message_content_allowed=False)
    fake.add_guild("a server")
    await fake.start()
    discord_settings = settings.discord.model_copy(
        update={"token": SecretStr(fake.token), "api_base": fake.api_base, "gateway_url": fake.gateway_url}
    )
    try:
        with pytest.raises(ConfigError, match="enable it in the Developer Portal"):
            await asyncio.wait_for(run(settings.model_copy(update={"discord": discord_settings})), 30)
        assert fake.identifies == [], "the gateway refused the IDENTIFY"
    finally:
        await fake.close()
        point_at(DiscordSettings())


def test_cli_reports_a_missing_token_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bot.cli import app

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("BOT_DISCORD__TOKEN", raising=False)
    result = CliRunner().invoke(app, ["discord"])
    assert result.exit_code == 2  # a missing setting: nothing was started
    # One message (the console may wrap it at its width), no traceback.
    assert " ".join(result.output.split()) == (
        "error: no Discord bot token: set BOT_DISCORD__TOKEN (Developer Portal → your app → Bot → Reset Token)"
    )
