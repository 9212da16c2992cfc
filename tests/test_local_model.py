"""Generation with the real SmolLM2-135M-Instruct through the engine (CPU; a few tokens each)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from langchain_core.messages import convert_to_messages

from bot.app import Runtime, build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.engine import ReplyFinished, TextDelta
from bot.errors import ModelBusy, ModelError
from bot.models.local import LocalRuntime
from bot.models.local_loader import LoadedModel
from bot.models.provider import DefaultModelProvider
from bot.settings import ModelSettings, Settings

pytestmark = pytest.mark.model

PERSONA = """\
id: tiny
name: Tiny
system_prompt: You are a concise assistant. Answer in one short sentence.
generation:
  temperature: 0.0
  max_new_tokens: 12
  repetition_penalty: 1.0
{extra}
"""


@pytest.fixture(scope="module")
def shared_runtime(local_model: LoadedModel) -> LocalRuntime:
    return LocalRuntime(local_model)


@contextlib.asynccontextmanager
async def runtime_with(settings: Settings, shared: LocalRuntime, extra: str = "") -> AsyncIterator[Runtime]:
    (Path(settings.personas_dir) / "tiny.yaml").write_text(PERSONA.format(extra=extra))
    # Start-up adapter checks would load the shipped adapters into the session's shared model
    # (PEFT wraps it in place); these tests are about the plain model, so leave those personas out.
    for adapter_persona in Path(settings.personas_dir).glob("*.yaml"):
        if "adapter:" in adapter_persona.read_text():
            adapter_persona.unlink()
    provider = DefaultModelProvider(ModelSettings(), settings.data_dir, runtime=shared)
    async with build_runtime(settings, model_provider=provider) as rt:
        yield rt


def ask(text: str, conversation: str = "m1") -> ChatRequest:
    return ChatRequest(conversation, Speaker("u", "Sam"), text, persona_id="tiny")


async def test_streams_real_tokens_and_records_usage(settings: Settings, shared_runtime: LocalRuntime) -> None:
    async with runtime_with(settings, shared_runtime) as rt:
        events = [e async for e in rt.engine.stream(ask("What is the capital of France?"))]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    done = events[-1]
    assert isinstance(done, ReplyFinished)
    assert len(deltas) >= 2 and done.text
    record = done.record
    assert record.backend == "local" and record.model == "SmolLM2-135M-Instruct"
    assert 0 < record.completion_tokens <= 12
    assert record.prompt_tokens == len(shared_runtime.encode_chat(record.prompt_messages))
    assert record.first_token_s is not None and record.first_token_s <= record.latency_s


async def test_greedy_is_deterministic_and_stop_strings_cut(settings: Settings, shared_runtime: LocalRuntime) -> None:
    async with runtime_with(settings, shared_runtime) as rt:
        first = await rt.engine.reply(ask("Name three colours.", "a"))
        second = await rt.engine.reply(ask("Name three colours.", "b"))
    assert first.text == second.text
    words = first.text.split()
    assert len(words) >= 3
    stop = words[2]
    async with runtime_with(settings, shared_runtime, f"  stop: [{stop!r}]") as rt:
        cut = await rt.engine.reply(ask("Name three colours.", "c"))
    assert cut.text == first.text[: first.text.index(stop)].strip()


async def test_abandoned_stream_frees_the_worker(settings: Settings, shared_runtime: LocalRuntime) -> None:
    async with runtime_with(settings, shared_runtime) as rt:
        async with contextlib.aclosing(rt.engine.stream(ask("Tell me a long story.", "x"))) as events:
            async for event in events:
                assert isinstance(event, TextDelta)
                break
        done = await rt.engine.reply(ask("Say hi.", "y"))
    assert done.text


# -- serving: the batch scheduler behind the engine ------------------------------------------------

EXAMPLES = """\
examples:
  - user: What is the capital of Italy?
    assistant: Rome.
  - user: What is the capital of Spain?
    assistant: Madrid.
"""


async def test_concurrent_conversations_decode_together_and_match_alone(
    settings: Settings, local_model: LoadedModel
) -> None:
    runtime = LocalRuntime(local_model)  # its own scheduler, so its stats are this test's
    questions = ["Name a fruit.", "What is two plus two?", "Say hello to Ann."]
    try:
        async with runtime_with(settings, runtime) as rt:
            alone = [(await rt.engine.reply(ask(q, f"alone-{i}"))).text for i, q in enumerate(questions)]
            assert runtime.scheduler.stats.max_rows == 1
            asked = [ask(q, f"together-{i}") for i, q in enumerate(questions)]
            together = await asyncio.gather(*(rt.engine.reply(request) for request in asked))
    finally:
        runtime.close()
    assert runtime.scheduler.stats.max_rows >= 2, "the conversations shared decode steps"
    assert [r.text for r in together] == alone  # greedy: batching changes nothing


async def test_persona_prompt_is_cached_across_turns_and_dropped_on_reload(
    settings: Settings, local_model: LoadedModel
) -> None:
    runtime = LocalRuntime(local_model)
    stats = runtime.scheduler.stats
    try:
        async with runtime_with(settings, runtime, EXAMPLES) as rt:
            first = await rt.engine.reply(ask("What is the capital of France?", "geo"))
            assert stats.cached == 0
            second = await rt.engine.reply(ask("And of Germany?", "geo"))
            # The second turn re-ran only what follows the system prompt and the examples.
            hard_prompt = second.record.prompt_messages[:5]  # system prompt + two examples
            prefix = runtime.loaded.tokenizer.apply_chat_template(hard_prompt, return_dict=True)["input_ids"]
            assert stats.cached == len(prefix) > 0
            assert stats.prefilled == first.record.prompt_tokens + second.record.prompt_tokens - stats.cached
            assert runtime.scheduler.prefix_cache is not None and len(runtime.scheduler.prefix_cache) == 1
            rt.personas.reload()
            assert len(runtime.scheduler.prefix_cache) == 0
    finally:
        runtime.close()


async def test_a_full_queue_answers_busy_and_a_closed_stream_frees_its_row(
    settings: Settings, local_model: LoadedModel
) -> None:
    runtime = LocalRuntime(local_model, ModelSettings(max_batch=1, max_queue=0))
    try:
        async with runtime_with(settings, runtime) as rt:
            async with contextlib.aclosing(rt.engine.stream(ask("Tell me a long story.", "long"))) as events:
                async for _ in events:
                    break  # the reply is being decoded: the one row is taken
                with pytest.raises(ModelBusy):
                    await rt.engine.reply(ask("Me too?", "other"))
            async with asyncio.timeout(30):
                # The row is freed at the worker's next decode step (a thread: no event to await).
                while runtime.scheduler.active:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert (await rt.engine.reply(ask("Say hi.", "other"))).text
            assert await rt.memory.load("long", 10) == [], "a reply that was not finished is not remembered"
    finally:
        runtime.close()


async def test_ainvoke_goes_through_the_scheduler_and_matches_the_stream(
    settings: Settings, local_model: LoadedModel
) -> None:
    runtime = LocalRuntime(local_model)
    try:
        async with runtime_with(settings, runtime) as rt:
            streamed = await rt.engine.reply(ask("Name a colour.", "colours"))
            bound = rt.models.bind(rt.personas.get("tiny"))
            answer = await bound.chat_model.ainvoke(convert_to_messages(streamed.record.prompt_messages))
    finally:
        runtime.close()
    assert str(answer.content).strip() == streamed.text
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == streamed.record.completion_tokens
    assert runtime.scheduler.stats.finished == 2, "both replies were decoded by the scheduler"



async def test_a_fault_inside_the_worker_reaches_the_engine_as_model_error_and_the_next_reply_works(
    settings: Settings, local_model: LoadedModel
) -> None:
    """The user gets the short apology (transports map ModelError), nothing half-done is remembered."""
    runtime = LocalRuntime(local_model)

    def nan_scores(module: object, args: object, output: torch.Tensor) -> torch.Tensor:
        return torch.full_like(output, float("nan"))

    try:
        async with runtime_with(settings, runtime) as rt:
            handle = local_model.model.lm_head.register_forward_hook(nan_scores)
            try:
                with pytest.raises(ModelError, match="NaN"):
                    await rt.engine.reply(ask("Name a colour.", "broken"))
            finally:
                handle.remove()
            assert await rt.memory.load("broken", 10) == []
            assert (await rt.engine.reply(ask("Name a colour.", "broken"))).text
    finally:
        runtime.close()
    assert runtime.scheduler.stats.failed == 1 and runtime.scheduler.broken is None
