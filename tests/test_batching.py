"""Continuous batching with the real SmolLM2 (CPU, greedy, <= 8 new tokens): a row's tokens are the
same batched as alone, whatever joins, leaves, is cancelled or uses another adapter, and the prompt
cache changes nothing but the time to first token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from bot.domain.persona import GenerationParams
from bot.errors import ModelBusy, ModelError
from bot.models.batching import BatchScheduler, Finished, RowStream, SoftPrompt, chat_prefix_length
from bot.models.local_loader import LoadedModel, load_local_model
from bot.settings import ModelSettings
from tests.conftest import MODEL_CACHE

pytestmark = pytest.mark.model

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=8, repetition_penalty=1.0)
SYSTEM = "You are a concise assistant. Answer in one short sentence."
QUESTIONS = ["What is the capital of France?", "Name three colours.", "How do I boil an egg?"]


def chat(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def encode(loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    encoded = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


async def collect(stream: RowStream) -> tuple[list[str], Finished]:
    pieces: list[str] = []
    async with stream:
        async for item in stream:
            if isinstance(item, Finished):
                return pieces, item
            pieces.append(item)
    raise AssertionError("stream ended without Finished")


@contextlib.contextmanager
def scheduler(loaded: LoadedModel, **kwargs: Any) -> Iterator[BatchScheduler]:
    s = BatchScheduler(loaded.model, loaded.tokenizer, **kwargs)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def model(local_model: LoadedModel) -> LoadedModel:
    """A private copy of the session model (loaded from the cache the session fixture made): other test
    modules serve personas with LoRA adapters through the session model, and PEFT wraps it in place."""
    return load_local_model(ModelSettings(), MODEL_CACHE)


@pytest.fixture(scope="module")
def prompts(model: LoadedModel) -> list[list[int]]:
    return [encode(model, chat(q)) for q in QUESTIONS]


@pytest.fixture(scope="module")
def alone(model: LoadedModel, prompts: list[list[int]]) -> list[Finished]:
    """Each prompt generated on its own: the reference every batched run must reproduce."""

    async def run() -> list[Finished]:
        with scheduler(model, max_batch=1) as s:
            return [(await collect(s.submit(ids, GREEDY)))[1] for ids in prompts]

    return asyncio.run(run())


def text_of(loaded: LoadedModel, finished: Finished) -> str:
    return str(loaded.tokenizer.decode(list(finished.token_ids), skip_special_tokens=True))


def test_alone_matches_transformers_generate(model: LoadedModel, prompts: list[list[int]],
                                             alone: list[Finished]) -> None:
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        out = model.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                         max_new_tokens=GREEDY.max_new_tokens,
                                         pad_token_id=model.tokenizer.pad_token_id)
    assert list(alone[0].token_ids) == out[0, ids.shape[1]:].tolist()[: len(alone[0].token_ids)]
    assert alone[0].prompt_tokens == len(prompts[0]) and alone[0].cached_tokens == 0


async def test_batched_rows_equal_rows_alone_and_stream_their_own_text(
    model: LoadedModel, prompts: list[list[int]], alone: list[Finished]
) -> None:
    with scheduler(model, max_batch=8) as s:
        results = await asyncio.gather(*(collect(s.submit(ids, GREEDY)) for ids in prompts))
        assert s.stats.max_rows == len(prompts)
    for (pieces, finished), reference in zip(results, alone, strict=True):
        assert finished.token_ids == reference.token_ids
        assert len(pieces) >= 2 and "".join(pieces) == text_of(model, reference)


async def test_rows_join_a_running_batch_mid_flight(
    model: LoadedModel, prompts: list[list[int]], alone: list[Finished]
) -> None:
    with scheduler(model, max_batch=8) as s:
        first = s.submit(prompts[0], GREEDY)
        head = await first.__anext__()  # the first row is decoding...
        assert isinstance(head, str)
        later = [asyncio.create_task(collect(s.submit(ids, GREEDY))) for ids in prompts[1:]]  # ...others join
        rest, finished = await collect(first)
        joined = await asyncio.gather(*later)
        assert s.stats.max_rows >= 2
    assert finished.token_ids == alone[0].token_ids and head + "".join(rest) == text_of(model, alone[0])
    for (_, result), reference in zip(joined, alone[1:], strict=True):
        assert result.token_ids == reference.token_ids


async def test_each_row_keeps_its_own_length_stop_strings_and_sampling(
    model: LoadedModel, prompts: list[list[int]], alone: list[Finished]
) -> None:
    reference_text = text_of(model, alone[1])
    stop = reference_text.split()[1]
    short = GREEDY.model_copy(update={"max_new_tokens": 3})
    stopping = GREEDY.model_copy(update={"stop": (stop,)})
    sampled = GenerationParams(temperature=1.0, top_p=0.9, max_new_tokens=8, repetition_penalty=1.3)
    with scheduler(model, max_batch=8, seed=0) as s:
        results = await asyncio.gather(
            collect(s.submit(prompts[0], short)),
            collect(s.submit(prompts[1], stopping)),
            collect(s.submit(prompts[2], GREEDY)),
            collect(s.submit(prompts[0], sampled)),
        )
    (_, cut), (pieces, stopped), (_, plain), (_, random_row) = results
    assert cut.token_ids == alone[0].token_ids[:3] and cut.finish_reason == "length"
    assert stopped.finish_reason == "stop" and "".join(pieces) == reference_text[: reference_text.index(stop)]
    assert plain.token_ids == alone[2].token_ids
    assert 1 <= random_row.completion_tokens <= 8


async def test_a_cancelled_row_frees_its_slot_without_disturbing_the_others(
    model: LoadedModel, prompts: list[list[int]], alone: list[Finished]
) -> None:
    with scheduler(model, max_batch=8) as s:
        keep = [asyncio.create_task(collect(s.submit(ids, GREEDY))) for ids in (prompts[0], prompts[2])]
        doomed = s.submit(prompts[1], GREEDY)
        assert isinstance(await doomed.__anext__(), str)
        await doomed.aclose()  # the user deleted their message
        results = await asyncio.gather(*keep)
        for _ in range(500):  # the worker updates its counters just after the last token went out
            if s.active == 0:
                break
            await asyncio.sleep(0.01)
        assert s.active == 0 and s.waiting == 0
        assert s.stats.finished == 2
    assert [r.token_ids for _, r in results] == [alone[0].token_ids, alone[2].token_ids]


async def test_prompt_cache_gives_the_same_tokens_as_no_cache(model: LoadedModel,
                                                              prompts: list[list[int]]) -> None:
    split = chat_prefix_length(model.tokenizer, chat(QUESTIONS[0]), 1, prompts[0])
    assert 0 < split < len(prompts[0])

    async def run(cache: bool) -> tuple[list[Finished], BatchScheduler]:
        with scheduler(model, max_batch=8, prompt_cache=cache) as s:
            first = (await collect(s.submit(prompts[0], GREEDY, prefix_len=split, cache_tag="tiny")))[1]
            rest = await asyncio.gather(
                *(collect(s.submit(ids, GREEDY, prefix_len=split, cache_tag="tiny")) for ids in prompts[1:])
            )
            return [first, *(r for _, r in rest)], s

    cached, with_cache = await run(True)
    uncached, _ = await run(False)
    assert [r.token_ids for r in cached] == [r.token_ids for r in uncached]
    assert [r.cached_tokens for r in cached] == [0, split, split]
    assert [r.cached_tokens for r in uncached] == [0, 0, 0]
    assert with_cache.prefix_cache is not None and with_cache.prefix_cache.hits == 2
    with_cache.invalidate("tiny")
    assert len(with_cache.prefix_cache) == 0


async def test_a_full_queue_rejects_at_once(model: LoadedModel, prompts: list[list[int]]) -> None:
    tiny = GREEDY.model_copy(update={"max_new_tokens": 2})
    with scheduler(model, max_batch=1, max_queue=1) as s:
        accepted = [s.submit(prompts[0], tiny), s.submit(prompts[1], tiny)]
        with pytest.raises(ModelBusy, match="busy"):
            s.submit(prompts[2], tiny)
        results = await asyncio.gather(*(collect(stream) for stream in accepted))
        assert [r.completion_tokens for _, r in results] == [2, 2] and s.stats.rejected == 1
        await collect(s.submit(prompts[2], tiny))  # room again


async def test_closing_the_scheduler_ends_waiting_rows_with_an_error(model: LoadedModel,
                                                                     prompts: list[list[int]]) -> None:
    s = BatchScheduler(model.model, model.tokenizer, max_batch=1)
    streams = [s.submit(ids, GREEDY) for ids in prompts[:2]]
    await asyncio.to_thread(s.close)
    for stream in streams:
        with pytest.raises(ModelError):
            async for _ in stream:
                pass
    with pytest.raises(ModelError):
        s.submit(prompts[0], GREEDY)


# -- adapters -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_model() -> Any:
    """A private model copy wrapped in one PeftModel with two random (non-zero) LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    loaded = load_local_model(ModelSettings(), MODEL_CACHE)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(loaded.model, config, adapter_name="one")
    torch.manual_seed(1)
    model.add_adapter("two", LoraConfig(r=4, lora_alpha=16, target_modules=["o_proj", "down_proj"],
                                        init_lora_weights=False))
    model.eval()
    return model


async def test_lora_soft_prompt_and_base_rows_share_a_batch_without_bleeding(
    model: LoadedModel, peft_model: Any
) -> None:
    messages = chat("Write a poem about the sea.")  # open enough for adapters to show
    ids = encode(model, messages)
    # Every row starts with the same persona prefix: the prompt cache must keep one entry per adapter.
    cached: dict[str, Any] = {"prefix_len": chat_prefix_length(model.tokenizer, messages, 1, ids)}
    hidden = model.model.config.hidden_size
    soft = SoftPrompt("random", torch.randn(4, hidden, generator=torch.Generator().manual_seed(0)) * 0.5)
    rows: list[dict[str, Any]] = [
        {"lora": "one"}, {"lora": "two"}, {}, {"soft_prompt": soft}, {"lora": "two", "soft_prompt": soft},
    ]
    with scheduler(model, max_batch=8) as plain:
        base_reference = (await collect(plain.submit(ids, GREEDY, **cached)))[1]
        soft_reference = (await collect(plain.submit(ids, GREEDY, soft_prompt=soft, **cached)))[1]
    peft_loaded = LoadedModel(peft_model, model.tokenizer, "peft", MODEL_CACHE, 8192, 0.0, True)
    with scheduler(peft_loaded, max_batch=1) as one_by_one:
        solo = [(await collect(one_by_one.submit(ids, GREEDY, **row, **cached)))[1] for row in rows]
        assert one_by_one.prefix_cache is not None and len(one_by_one.prefix_cache) == len(rows)
    with scheduler(peft_loaded, max_batch=8) as batched:
        together = await asyncio.gather(*(collect(batched.submit(ids, GREEDY, **row, **cached)) for row in rows))
        assert batched.stats.max_rows == len(rows)
    assert [r.token_ids for _, r in together] == [r.token_ids for r in solo]
    assert solo[2].token_ids == base_reference.token_ids  # "__base__" rows are the plain model
    assert solo[3].token_ids == soft_reference.token_ids
    assert solo[3].prompt_tokens == len(ids) + soft.virtual_tokens
    assert len({r.token_ids for r in solo}) == len(rows)  # every adapter really changes the reply
    # PEFT's own generate with only adapter "one" active is the reference for the "one" rows.
    peft_model.set_adapter("one")
    with torch.inference_mode():
        ids_tensor = torch.tensor([ids])
        out = peft_model.generate(input_ids=ids_tensor, attention_mask=torch.ones_like(ids_tensor), do_sample=False,
                                  max_new_tokens=8, pad_token_id=model.tokenizer.pad_token_id)
    assert list(solo[0].token_ids) == out[0, len(ids):].tolist()[: len(solo[0].token_ids)]
