"""ChatEngine with the scripted backend and a real Redis: prompts, memory, records, locks, failures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.tracers.context import collect_runs

from bot.app import Runtime, build_runtime
from bot.domain.messages import ChatMessage, ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.engine import ReplyFinished, TextDelta, to_langchain
from bot.errors import ModelError, PersonaNotFound
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


async def test_a_failed_reply_is_noted_for_experiment_guardrails(runtime: Runtime) -> None:
    """No ReplyRecord for a reply the model never wrote, but the feedback log notes the failure (persona,
    version, variant, conversation), so a canary that fails more than control is rolled back."""
    from bot.refine.experiments import CANARY, CONTROL_ARM, Experiment, collect

    started = time.time() - 1
    with pytest.raises(ModelError):
        await runtime.engine.reply(ask("please BOOM", conversation="c9"))
    [failure] = await runtime.feedback.failures("assistant", started)
    assert (failure.persona_id, failure.persona_version, failure.variant) == ("assistant", "1.0", "default")
    assert failure.conversation_id == "c9" and failure.kind == "ModelError"
    stats = await runtime.feedback.stats()
    assert stats["assistant|1.0|default"]["failed"] == 1
    await runtime.engine.reply(ask("fine", conversation="c9"))
    experiment = Experiment("assistant", {}, "canary-1", "1.0", "personas/assistant.yaml", True, 0.1, started)
    arms = await collect(runtime.feedback, experiment)
    assert arms[CONTROL_ARM].replies["c9"] == [2, 0, 1], "two replies asked for, none rated, one failed"
    assert arms[CANARY].reply_count == 0


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


async def test_a_redis_outage_answers_without_memory_keeps_the_reply_and_needs_no_restart(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedRedis(tmp_path / "own-redis", port=free_port())
    url = server.start()
    own = settings.model_copy(update={"redis": RedisSettings(url=url, socket_timeout=1.0)})
    try:
        async with build_runtime(own, model_provider=Scripted()) as rt:
            assert rt.replayer is not None
            await rt.engine.reply(ask("before"))
            server.stop()
            during = await rt.engine.reply(ask("during"))
            assert during.text == "[Ada] You said: during", "answered, without the remembered turns"
            assert "Redis is unavailable" in caplog.text
            assert "before" not in str(during.record.prompt_messages)
            server.start()
            async with asyncio.timeout(30):
                await rt.replayer.settled()
            after = await rt.engine.reply(ask("after"))
            record = await rt.feedback.get(after.reply_id)
            assert record is not None
            said = [m["content"] for m in record.prompt_messages]
            assert "before" in said, "AOF kept the memory"
            assert "during" in said, "the journal kept the reply given during the outage"
            assert await rt.feedback.get(during.reply_id) == during.record
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


async def test_reply_has_released_the_conversation_lock_when_it_returns(runtime: Runtime) -> None:
    # reply() runs the stream to its end: the lock is free as soon as reply() returns, not whenever
    # the event loop gets around to finalizing an abandoned generator.
    await runtime.engine.reply(ask("hello"))
    assert not runtime.engine.locks.busy("c1")


# -- the engine streams through LangChain's public astream: callbacks, tracing, non-streaming models --


class _NonStreamingModel(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "non-streaming"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="whole", id="fixed"))])


class _Tokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ended = 0

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    async def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.ended += 1


class _Fixed:
    """A ModelProvider handing every persona the same chat model."""

    def __init__(self, model: BaseChatModel) -> None:
        self.model = model

    def bind(self, persona: Persona) -> BoundModel:
        return BoundModel(self.model, "test", "test", persona.adapter, 4096, approx_token_count)


async def test_callbacks_and_tracing_see_each_reply(settings: Settings) -> None:
    handler = _Tokens()
    model = ScriptedChatModel(persona_name="Ada", callbacks=[handler])
    async with build_runtime(settings, model_provider=_Fixed(model)) as rt:
        reply = await rt.engine.reply(ask("hello there"))
        assert "".join(handler.tokens).strip() == reply.text and handler.ended == 1
        with collect_runs() as runs:  # a configure hook, as LangSmith tracing is
            await rt.engine.reply(ask("and again"))
        assert len(runs.traced_runs) == 1


async def test_a_model_that_cannot_stream_answers_whole(settings: Settings) -> None:
    async with build_runtime(settings, model_provider=_Fixed(_NonStreamingModel())) as rt:
        assert (await rt.engine.reply(ask("hello"))).text == "whole"


def test_langchain_messages_are_built_once_and_equal_fresh_ones() -> None:
    messages = [ChatMessage("system", "s"), ChatMessage("user", "u"), ChatMessage("assistant", "a")]
    first, second = to_langchain(messages), to_langchain(messages)
    assert first == [SystemMessage(content="s"), HumanMessage(content="u"), AIMessage(content="a")]
    assert all(a is b for a, b in zip(first, second, strict=True))


async def test_system_prompt_shows_the_local_date(runtime: Runtime) -> None:
    before = datetime.now().astimezone()
    done = await runtime.engine.reply(ask("what day is it?"))
    after = datetime.now().astimezone()
    system = done.record.prompt_messages[0]["content"]
    assert any(f"Today is {t:%A}, {t:%Y-%m-%d}." in system for t in (before, after))


async def test_a_cancellation_swallowed_by_the_redis_client_still_stops_the_reply(runtime: Runtime) -> None:
    """redis-py's asyncio client can swallow a cancellation that lands mid-command (redis-py#2028):
    the memory load returns as if nothing happened. The engine must still stop (a deleted message)."""
    memory = runtime.engine.stores.memory
    entered, load = asyncio.Event(), memory.load

    async def swallowing_load(conversation_id: str, max_turns: int) -> Any:
        entered.set()
        # What the client does to a cancellation that arrives while it reads a reply: it is dropped.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        return await load(conversation_id, max_turns)

    memory.load = swallowing_load  # type: ignore[method-assign]
    task = asyncio.create_task(runtime.engine.reply(ask("stop me", conversation="stopped")))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    memory.load = load  # type: ignore[method-assign]
    assert await runtime.memory.load("stopped", 10) == [], "nothing of the stopped reply is remembered"
