"""Run the real bot (build_runtime + create_bot + discord.py) against a FakeDiscord.

    async with DiscordHarness.running(settings, always_answer=True) as h:
        message, outcome = await h.say(h.alice, h.general, "hello", mention_bot=True)
        [reply] = h.reply_of(outcome)

`say` and `react` return once the bot has finished handling the event: the bot dispatches
`persona_handled` / `persona_rated` at the end of each, and the harness waits for that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from bot.app import Runtime, build_discord_state, build_runtime
from bot.domain.persona import Persona
from bot.errors import ModelBusy
from bot.models.scripted import ScriptedChatModel, approx_token_count
from bot.ports import BoundModel
from bot.settings import Settings
from bot.transports.discord import PersonaBot, create_bot
from bot.transports.discord.handling import Outcome

from . import payloads as p
from .payloads import Json
from .server import WAIT_S, FakeDiscord
from .world import Guild, SentMessage

FAIL_MARKER = "please fail"
HOLD_MARKER = "wait for it"
BUSY_MARKER = "everyone at once"
PAUSE_MARKER = "pause midway"


class HeldScriptedModel(ScriptedChatModel):
    """The scripted model, except that it waits for `hold` before answering a HOLD_MARKER message,
    and after the first piece of its answer to a PAUSE_MARKER message."""

    hold: Any = None

    async def _astream(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        text = str(messages[-1].content)
        if BUSY_MARKER in text:
            raise ModelBusy("the local model is busy: 32 requests are waiting (max_queue=32)")
        if self.hold is not None and HOLD_MARKER in text:
            await self.hold.wait()
        pause = self.hold is not None and PAUSE_MARKER in text
        async for chunk in super()._astream(messages, *args, **kwargs):
            yield chunk
            if pause and chunk.message.content:
                pause = False
                await self.hold.wait()


class ScriptedProvider:
    """A ModelProvider whose replies the test controls: queued replies, else an echo.

    The echo ("[Persona Name] You said: <message>") shows which persona answered and what
    reached the model. A message containing FAIL_MARKER makes the model raise (BUSY_MARKER: raise
    ModelBusy, as a full local-model queue does); one containing
    HOLD_MARKER (PAUSE_MARKER) waits before (after the first piece of) its answer until the test
    sets `hold`.
    """

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.bound: list[str] = []  # persona ids, one per generation
        self.hold = asyncio.Event()

    def bind(self, persona: Persona) -> BoundModel:
        self.bound.append(persona.id)
        replies = [self.queue.pop(0)] if self.queue else []
        model = HeldScriptedModel(persona_name=persona.name, replies=replies, fail_on=FAIL_MARKER, hold=self.hold)
        return BoundModel(model, "scripted", "scripted", None, 8192, approx_token_count)


class DiscordHarness:
    """The fake Discord with a prepared world, and the real bot connected to it."""

    def __init__(self, settings: Settings, **discord: Any) -> None:
        self.fake = build_world()
        self.provider = ScriptedProvider()
        world = self.fake.world
        self.guild: Guild = world["guild"]
        self.general: Json = world["general"]
        self.lounge: Json = world["lounge"]  # an "always answer" channel
        self.alice: Json = world["alice"]
        self.bob: Json = world["bob"]
        self.admin: Json = world["admin"]  # has the configured admin role
        self.other_bot: Json = world["other_bot"]
        self._settings = settings
        self._discord = {
            "token": self.fake.token,
            "user_cooldown_s": 0,
            "always_answer_channels": [int(self.lounge["id"])],
            "admin_role_ids": [world["admin_role"]],
            **discord,
        }
        self._bot_stack: contextlib.AsyncExitStack | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings, **discord: Any) -> AsyncIterator[DiscordHarness]:
        """Start the fake and the bot (`discord` overrides DiscordSettings fields); stop both after."""
        harness = cls(settings, **discord)
        async with harness.run():
            yield harness

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Start the fake and the bot (after the test has changed the world, if it wants to)."""
        await self.fake.start()
        try:
            await self.start_bot()
            yield
        finally:
            await self.stop_bot()
            await self.fake.close()

    @property
    def settings(self) -> Settings:
        update = {**self._discord, "api_base": self.fake.api_base, "gateway_url": self.fake.gateway_url}
        return self._settings.model_copy(update={"discord": self._settings.discord.model_copy(update=update)})

    async def start_bot(self) -> None:
        """Build the runtime and the bot as `python -m bot discord` does, and connect it."""
        stack = contextlib.AsyncExitStack()
        self.runtime: Runtime = await stack.enter_async_context(
            build_runtime(self.settings, model_provider=self.provider)
        )
        self.bot: PersonaBot = create_bot(self.runtime, build_discord_state(self.runtime), guild_ready_timeout=0.05)
        task = asyncio.create_task(self.bot.start(self.fake.token))

        async def stop() -> None:
            await self.bot.close()
            await asyncio.wait_for(task, WAIT_S)

        stack.push_async_callback(stop)
        self._bot_stack = stack
        ready = asyncio.create_task(self.bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await self.stop_bot()
            raise RuntimeError("the bot did not become ready")

    async def stop_bot(self) -> None:
        if self._bot_stack is not None:
            stack, self._bot_stack = self._bot_stack, None
            await stack.aclose()

    async def restart_bot(self) -> None:
        """A new process in spirit: a new runtime and bot, the same Redis and the same Discord."""
        await self.stop_bot()
        await self.start_bot()

    # -- acting as users ------------------------------------------------------------------------

    async def say(self, author: Json, channel: Json, content: str, **kwargs: Any) -> tuple[Json, Outcome]:
        """Post a user message and wait until the bot has handled it."""
        message = self.fake.user_message(author, channel, content, **kwargs)
        outcome = await self.deliver(message)
        return message, outcome

    async def deliver(self, message: Json) -> Outcome:
        """Dispatch a MESSAGE_CREATE (again, for redeliveries) and wait for its outcome."""
        waiter = self.bot.wait_for("persona_handled", check=lambda m, _: m.id == int(message["id"]), timeout=WAIT_S)
        await self.fake.dispatch_message(message)
        _, outcome = await waiter
        return outcome

    async def react(self, user: Json, message_id: int, emoji: str, *, add: bool = True) -> str:
        """Add or remove a reaction and wait until the bot has handled it; returns its outcome."""
        waiter = self.bot.wait_for(
            "persona_rated",
            check=lambda payload, _: payload.message_id == message_id and payload.user_id == int(user["id"]),
            timeout=WAIT_S,
        )
        await self.fake.react(user, message_id, emoji, add=add)
        _, outcome = await waiter
        return outcome

    # -- looking at what the bot did ------------------------------------------------------------

    @staticmethod
    async def until(predicate: Callable[[], Any]) -> Any:
        """Wait until `predicate()` holds for the bot's own state (checked every few ms; WAIT_S at
        most). For what the fake Discord sees, `fake.wait_until` wakes on each request instead."""
        async with asyncio.timeout(WAIT_S):
            while not (result := predicate()):  # noqa: ASYNC110 - the bot's state has no event to wait on
                await asyncio.sleep(0.01)
            return result

    def reply_of(self, outcome: Outcome) -> list[SentMessage]:
        """The messages of a reply, as the fake Discord recorded them."""
        by_id = {m.id: m for m in self.fake.sent}
        return [by_id[i] for i in outcome.message_ids]

    async def ratings_of(self, outcome: Outcome) -> dict[str, int]:
        assert outcome.reply_id is not None
        return await self.runtime.engine.feedback.ratings(outcome.reply_id)


def build_world() -> FakeDiscord:
    """One server with two channels, three members (one an admin) and another bot."""
    fake = FakeDiscord()
    guild = fake.add_guild("Test Server")
    admin_role = fake.add_role(guild, "bot admins")
    world: dict[str, Any] = {
        "guild": guild,
        "admin_role": admin_role,
        "general": fake.add_channel(guild, "general"),
        "lounge": fake.add_channel(guild, "lounge"),
        "alice": fake.add_user("alice"),
        "bob": fake.add_user("bob"),
        "admin": fake.add_user("admin"),
        "other_bot": fake.add_user("otherbot", bot=True),
    }
    for name in ("alice", "bob", "other_bot"):
        fake.join(guild, world[name])
    fake.join(guild, world["admin"], roles=[admin_role])
    fake.world = world
    return fake


__all__ = [
    "BUSY_MARKER",
    "FAIL_MARKER",
    "HOLD_MARKER",
    "PAUSE_MARKER",
    "DiscordHarness",
    "ScriptedProvider",
    "build_world",
    "p",
]
