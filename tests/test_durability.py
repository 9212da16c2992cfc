"""Nothing a user does is lost: a real redis-server is killed (SIGKILL) or stopped (SIGSTOP) while
users chat, link and rate, and afterwards every reply, turn, link and rating is counted.

Each test runs its own redis-server (never the session's), and waits on events with timeouts.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.app import Runtime, build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.errors import WriteQueued
from bot.redis_conn import EmbeddedRedis
from bot.settings import Settings
from tests.conftest import free_port
from tests.test_engine import Scripted

WORKERS = 6
MESSAGES = 9  # per worker, all in the worker's own conversation (the assistant persona keeps 10 turns)
REPLAY_TIMEOUT_S = 30


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    own = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    own.start()
    yield own
    if own.pid is not None:
        os.kill(own.pid, signal.SIGCONT)
    own.stop()


def durable(settings: Settings, server: EmbeddedRedis) -> Settings:
    """Settings on this test's own server, with short timeouts so stalls are noticed quickly."""
    redis = settings.redis.model_copy(update={"url": SecretStr(server.url), "socket_timeout": 0.5})
    journal = settings.journal.model_copy(update={"retry_max_s": 0.2})
    return settings.model_copy(update={"redis": redis, "journal": journal})


@dataclass
class Ledger:
    """What the engine acknowledged, and so what the stores must hold in the end."""

    replies: list[str] = field(default_factory=list)
    said: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # conversation -> texts
    ratings: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # reply -> user -> value
    outcomes: list[str] = field(default_factory=list)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def step(self) -> None:
        async with self.progress:
            self.progress.notify_all()

    async def reach(self, events: int) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: len(self.outcomes) >= events)

    def rated(self, reply: str, user: str, value: int, *, removed: bool) -> None:
        current = self.ratings[reply].get(user, 0)
        if not removed:
            self.ratings[reply][user] = value
        elif current == value:
            self.ratings[reply].pop(user, None)


def ask(text: str, conversation: str, user: str) -> ChatRequest:
    return ChatRequest(conversation, Speaker(user, user.title()), text)


async def chat_and_rate(rt: Runtime, ledger: Ledger, worker: int) -> None:
    """One user: messages in their own conversation; after each, a rating event on some reply."""
    rng = random.Random(worker)
    user, conversation = f"user{worker}", f"conv{worker}"
    for i in range(MESSAGES):
        text = f"{user} message {i}"
        finished = await rt.engine.reply(ask(text, conversation, user))
        await rt.engine.link_shown(finished.reply_id, [f"msg:{finished.reply_id}:0", f"msg:{finished.reply_id}:1"])
        ledger.replies.append(finished.reply_id)
        ledger.said[conversation].append(text)
        target = rng.choice(ledger.replies)
        value = rng.choice((1, -1))
        if rng.random() < 0.7:  # a reaction on one of the reply's messages, added or removed
            removed = rng.random() < 0.3
            outcome = await rt.engine.rate_message(f"msg:{target}:{i % 2}", user, value, removed=removed)
            ledger.rated(target, user, value, removed=removed)
        else:  # a console-style rating by reply id
            outcome = await rt.engine.rate(target, user, value, source="test")
            ledger.rated(target, user, value, removed=False)
        ledger.outcomes.append(outcome)
        await ledger.step()


async def run_with_outage(rt: Runtime, ledger: Ledger, fault: Callable[[], None], heal: Callable[[], None]) -> None:
    """Users chat and rate throughout; the fault strikes a third of the way in, heals at two thirds."""

    async def saboteur() -> None:
        await ledger.reach(WORKERS * MESSAGES // 3)
        fault()
        await ledger.reach(2 * WORKERS * MESSAGES // 3)
        heal()

    async with asyncio.timeout(120):
        await asyncio.gather(saboteur(), *(chat_and_rate(rt, ledger, w) for w in range(WORKERS)))
        await rt.replayer.settled()  # type: ignore[union-attr]


async def assert_nothing_lost(rt: Runtime, ledger: Ledger) -> None:
    """0 ratings lost, 0 shown replies missing, 0 duplicates (records, counters, turns)."""
    assert "queued" in ledger.outcomes, "the outage happened while users were rating"
    assert await rt.journal.count() == (0, 0), "everything replayed, nothing set aside"  # type: ignore[union-attr]
    for reply in ledger.replies:
        assert await rt.feedback.get(reply) is not None, f"reply {reply} was shown but is not recorded"
        assert await rt.feedback.resolve(f"msg:{reply}:1") == reply
        assert await rt.feedback.ratings(reply) == ledger.ratings.get(reply, {}), f"ratings of {reply}"
    [counters] = (await rt.feedback.stats()).values()
    values = [v for by_user in ledger.ratings.values() for v in by_user.values()]
    assert counters["replies"] == len(ledger.replies) == WORKERS * MESSAGES, "each reply counted once"
    assert (counters.get("up", 0), counters.get("down", 0)) == (values.count(1), values.count(-1))
    for conversation, texts in ledger.said.items():
        turns = await rt.memory.load(conversation, 100)
        assert [t.content for t in turns if t.role == "user"] == texts, "every turn once, in order"


async def test_redis_killed_mid_run_loses_nothing(settings: Settings, server: EmbeddedRedis) -> None:
    ledger = Ledger()
    async with build_runtime(durable(settings, server), model_provider=Scripted()) as rt:

        def kill() -> None:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)

        await run_with_outage(rt, ledger, kill, server.start)
        assert rt.replayer is not None and rt.replayer.replayed > 0
        await assert_nothing_lost(rt, ledger)


async def test_redis_stopped_mid_run_loses_and_duplicates_nothing(settings: Settings, server: EmbeddedRedis) -> None:
    # A SIGSTOPped server times out the writes in flight, then runs them when it resumes: the
    # journal replays them too, and the stores count each once.
    ledger = Ledger()
    pid = server.pid
    assert pid is not None
    async with build_runtime(durable(settings, server), model_provider=Scripted()) as rt:
        await run_with_outage(rt, ledger, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT))
        await assert_nothing_lost(rt, ledger)


async def test_a_bot_restarted_during_the_outage_replays_the_journal(settings: Settings, server: EmbeddedRedis) -> None:
    own = durable(settings, server)
    async with build_runtime(own, model_provider=Scripted()) as rt:
        before = await rt.engine.reply(ask("before the outage", "c1", "alice"))
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        during = await rt.engine.reply(ask("during the outage", "c1", "alice"))
        assert "during the outage" in during.text, "answered, without memory"
        assert await rt.engine.link_shown(during.reply_id, ["msg:during"]) is None
        assert await rt.engine.rate_message("msg:during", "bob", 1) == "queued"
        assert await rt.engine.rate(before.reply_id, "bob", -1) == "queued"
    server.start()
    async with build_runtime(own, model_provider=Scripted()) as rt:
        assert rt.replayer is not None
        async with asyncio.timeout(REPLAY_TIMEOUT_S):
            await rt.replayer.settled()
        # The writes Redis acknowledged just before it died go first (it may have lost them), then the
        # outage's: record + turns, link, two ratings.
        assert rt.replayer.replayed == 2 + 5
        assert await rt.feedback.ratings(during.reply_id) == {"bob": 1}
        assert await rt.feedback.ratings(before.reply_id) == {"bob": -1}
        turns = [t.content for t in await rt.memory.load("c1", 10) if t.role == "user"]
        assert turns == ["before the outage", "during the outage"]
        after = await rt.engine.reply(ask("and after", "c1", "alice"))
        record = await rt.feedback.get(after.reply_id)
        assert record is not None
        assert "during the outage" in str(record.prompt_messages), "the replayed turns are remembered"


async def test_forget_me_during_an_outage_drops_the_journal_at_once_and_the_rest_later(
    settings: Settings, server: EmbeddedRedis
) -> None:
    async with build_runtime(durable(settings, server), model_provider=Scripted()) as rt:
        assert rt.journal is not None and rt.replayer is not None
        kept = await rt.engine.reply(ask("alice before", "c1", "alice"))
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        await rt.engine.reply(ask("alice during: quokka-secret", "c1", "alice"))
        bobs = await rt.engine.reply(ask("bob during", "c2", "bob"))
        with pytest.raises(WriteQueued, match="deleting your data"):
            await rt.engine.forget_user("alice")
        pending = [w for _, w in await rt.journal.oldest(100)]
        assert "quokka-secret" not in repr(pending), "alice's words left the journal at once"
        assert [w.kind for w in pending] == ["record", "turns", "forget_user"]
        server.start()
        async with asyncio.timeout(REPLAY_TIMEOUT_S):
            await rt.replayer.settled()
        assert await rt.feedback.get(kept.reply_id) is None, "the deletion ran when Redis came back"
        assert await rt.memory.load("c1", 10) == []
        assert await rt.feedback.get(bobs.reply_id) is not None


def files_containing(directory: Path, word: bytes) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and word in p.read_bytes())


async def test_forget_me_reaches_the_disk(settings: Settings) -> None:
    """The embedded server in the data directory: after /forget-me, grep finds the user's words
    nowhere under it (AOF, RDB, journal), including words journaled during a stall."""
    data = settings.data_dir
    own = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": None, "socket_timeout": 0.5}),
                                      "journal": settings.journal.model_copy(update={"retry_max_s": 0.2})})
    async with build_runtime(own, model_provider=Scripted()) as rt:
        assert rt.embedded is not None and rt.replayer is not None
        await rt.engine.reply(ask("my word is xylophonic-zebra", "c1", "alice"))
        await rt.engine.reply(ask("bob keeps marsupial-kettle", "c2", "bob"))
        await rt.redis.client.save()  # the words are in a snapshot too
        assert files_containing(data, b"xylophonic-zebra") == ["redis/appendonly.aof", "redis/bot.rdb"]
        pid = rt.embedded.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await rt.engine.reply(ask("and quietly-vanishing-wombat", "c1", "alice"))  # journaled: Redis stalls
            assert files_containing(data, b"quietly-vanishing-wombat") != []
            with pytest.raises(WriteQueued):
                await rt.engine.forget_user("alice")
            assert files_containing(data, b"quietly-vanishing-wombat") == [], "gone from the journal at once"
        finally:
            os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(REPLAY_TIMEOUT_S):
            await rt.replayer.settled()
        assert files_containing(data, b"xylophonic-zebra") == []
        assert files_containing(data, b"quietly-vanishing-wombat") == []
        assert "redis/appendonly.aof" in files_containing(data, b"marsupial-kettle"), "others' data stays"


async def test_a_write_that_timed_out_but_was_applied_counts_once(
    settings: Settings, server: EmbeddedRedis, personas_dir: Path
) -> None:
    # A persona without memory: its reply goes straight to the record write, which the stopped server
    # holds. The client times out and journals it; resumed, the server applies it; then the journal
    # replays it. Without the store's idempotency the reply would count twice.
    (personas_dir / "forgetful.yaml").write_text(
        "id: forgetful\nname: Fo\nversion: '1'\nsystem_prompt: You forget.\nmemory:\n  max_turns: 0\n"
    )
    async with build_runtime(durable(settings, server), model_provider=Scripted()) as rt:
        assert rt.replayer is not None and server.pid is not None
        ask = ChatRequest("c1", Speaker("alice", "Alice"), "hello", persona_id="forgetful")
        await rt.engine.reply(ask)  # the server knows the record script now: a stalled call will run
        os.kill(server.pid, signal.SIGSTOP)
        try:
            reply = await rt.engine.reply(ask)
            # The first reply (Redis acknowledged it lately, it may lose it) is queued ahead of the second.
            assert rt.journal is not None and [w.kind for _, w in await rt.journal.oldest(10)] == ["record"] * 2
        finally:
            os.kill(server.pid, signal.SIGCONT)
        async with asyncio.timeout(REPLAY_TIMEOUT_S):
            await rt.replayer.settled()
        assert rt.replayer.replayed == 2
        assert await rt.feedback.get(reply.reply_id) == reply.record
        assert (await rt.feedback.stats())["forgetful|1|default"]["replies"] == 2
