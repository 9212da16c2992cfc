"""ChatEngine with the scripted backend and a real Redis: prompts, memory, records, locks, failures."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Runtime, build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.engine import ReplyFinished, TextDelta
from bot.errors import ModelError, PersonaNotFound, StoreError
from bot.models.scripted import ScriptedChatModel, approx_token_count
from bot.ports import BoundModel
from bot.redis_conn import EmbeddedRedis
from bot.settings import RedisSettings, Settings
from tests.conftest import free_port


class Scripted:
    """A ModelProvider handing out one ScriptedChatModel per persona."""

    def __init__(self, **options: object) -> None:
        self.options = options
        self.models: dict[str, ScriptedChatModel] = {}

    def bind(self, persona: Persona) -> BoundModel:
        model = self.models.setdefault(persona.id, ScriptedChatModel(persona_name=persona.name, **self.options))
        return BoundModel(model, "scripted", "scripted", persona.adapter, 4096, approx_token_count)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with build_runtime(settings, model_provider=Scripted(fail_on="BOOM")) as rt:
        yield rt


def ask(text: str, conversation: str = "c1", user: str = "u1", persona: str | None = None) -> ChatRequest:
    return ChatRequest(conversation, Speaker(user, user.title()), text, persona_id=persona)


async def test_streams_deltas_then_one_finished_event(runtime: Runtime) -> None:
    events = [e async for e in runtime.engine.stream(ask("hello there"))]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1
    finished = events[-1]
    assert isinstance(finished, ReplyFinished)
    assert "".join(deltas).strip() == finished.text == "[Ada] You said: hello there"


async def test_reply_record_describes_the_exact_prompt(runtime: Runtime) -> None:
    done = await runtime.engine.reply(ask("hi"))
    record = await runtime.feedback.get(done.reply_id)
    assert record is not None
    assert record.persona_id == "assistant" and record.persona_version == "1.0"
    assert record.prompt_messages[0]["role"] == "system"
    assert "chatting with U1" in record.prompt_messages[0]["content"]
    assert record.prompt_messages[-1] == {"role": "user", "content": "hi"}
    assert record.reply == done.text
    assert record.prompt_tokens > 0 and record.completion_tokens == len(done.text.split())
    assert record.generation["max_new_tokens"] == 128


async def test_memory_feeds_the_next_turn(runtime: Runtime) -> None:
    await runtime.engine.reply(ask("my name is Zed"))
    second = await runtime.engine.reply(ask("what is my name?"))
    record = await runtime.feedback.get(second.reply_id)
    assert record is not None
    contents = [m["content"] for m in record.prompt_messages]
    assert "my name is Zed" in contents and "[Ada] You said: my name is Zed" in contents


async def test_conversations_and_personas_are_isolated(runtime: Runtime) -> None:
    await runtime.engine.reply(ask("secret in c1", conversation="c1"))
    other = await runtime.engine.reply(ask("hello", conversation="c2"))
    switched = await runtime.engine.reply(ask("hello", conversation="c1", persona="captain"))
    for done in (other, switched):
        record = await runtime.feedback.get(done.reply_id)
        assert record is not None
        assert all("secret" not in m["content"] for m in record.prompt_messages)
    assert switched.text.startswith("[Captain Redbeard]")


async def test_one_message_at_a_time_per_conversation(settings: Settings) -> None:
    async with build_runtime(settings, model_provider=Scripted(delay_s=0.01)) as rt:
        order: list[str] = []

        async def run(text: str, conversation: str) -> None:
            async for event in rt.engine.stream(ask(text, conversation=conversation)):
                if isinstance(event, TextDelta):
                    order.append(text)

        await asyncio.gather(run("first", "same"), run("second", "same"), run("other", "elsewhere"))
        same = [t for t in order if t != "other"]
        # Each reply in one conversation streams whole before the next one starts...
        switches = sum(1 for a, b in itertools.pairwise(same) if a != b)
        assert switches == 1
        # ...while another conversation streams at the same time.
        assert order.index("other") < max(i for i, t in enumerate(order) if t != "other")


async def test_model_failure_is_a_model_error_and_saves_nothing(runtime: Runtime) -> None:
    with pytest.raises(ModelError):
        await runtime.engine.reply(ask("please BOOM"))
    assert await runtime.memory.load("c1", 10) == []
    ok = await runtime.engine.reply(ask("still there?"))
    assert ok.text.endswith("still there?")


async def test_unknown_persona(runtime: Runtime) -> None:
    with pytest.raises(PersonaNotFound) as info:
        await runtime.engine.reply(ask("hi", persona="nobody"))
    assert "assistant" in str(info.value)


async def test_ratings_and_reset_and_forget(runtime: Runtime) -> None:
    done = await runtime.engine.reply(ask("rate me"))
    await runtime.engine.rate(done.reply_id, "u1", 1, source="test")
    assert await runtime.feedback.ratings(done.reply_id) == {"u1": 1}
    await runtime.engine.reply(ask("other conversation", conversation="c2"))
    await runtime.engine.reset("c2")
    assert await runtime.memory.load("c2", 10) == []
    assert len(await runtime.memory.load("c1", 10)) == 2
    messages, records = await runtime.engine.forget_user("u1")
    assert (messages, records) == (2, 2)
    assert await runtime.memory.load("c1", 10) == [] and await runtime.feedback.get(done.reply_id) is None


async def test_redis_outage_is_a_store_error_and_recovery_needs_no_restart(
    tmp_path: Path, settings: Settings
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    url = server.start()
    own = settings.model_copy(update={"redis": RedisSettings(url=url, socket_timeout=1.0)})
    try:
        async with build_runtime(own, model_provider=Scripted()) as rt:
            await rt.engine.reply(ask("before"))
            server.stop()
            with pytest.raises(StoreError):
                await rt.engine.reply(ask("during"))
            server.start()
            after = await rt.engine.reply(ask("after"))
            record = await rt.feedback.get(after.reply_id)
            assert record is not None
            assert "before" in [m["content"] for m in record.prompt_messages]  # AOF kept the memory
    finally:
        server.stop()


async def test_forget_me_also_removes_replies_to_others_that_quoted_them(runtime: Runtime) -> None:
    await runtime.engine.reply(ask("alice's secret", conversation="shared", user="alice"))
    bobs = await runtime.engine.reply(ask("what did she say?", conversation="shared", user="bob"))
    record = await runtime.feedback.get(bobs.reply_id)
    assert record is not None and record.participants == ["alice", "bob"]
    await runtime.engine.rate(bobs.reply_id, "bob", 1)
    await runtime.engine.forget_user("alice")
    assert await runtime.feedback.get(bobs.reply_id) is None
    assert [r async for r in runtime.feedback.iter_rated()] == []
