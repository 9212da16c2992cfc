"""The native engine (bot.models.native) against the transformers reference, with the real SmolLM2:

* its tokenizer and chat template give transformers' token ids and text;
* float32: the same greedy tokens as transformers' forward for base, LoRA (read from PEFT's files) and
  soft-prompt rows in one batch, with the C decode operations and with plain torch operations;
* the GGUF's own blocks: bit for bit the float32 reference weights, so the 4-bit path decodes the
  reference's greedy tokens; int8: the transformers int8 path's tokens and a held-out loss within 2%;
* the prompt cache, cancellation, a failing decode step, NaN scores, sync invoke and the engine
  choice (an adapter only PEFT computes exactly sends the model to transformers).

Tests that need a C compiler skip without one; the float32 torch path runs everywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from bot.domain.persona import GenerationParams
from bot.errors import ModelError, ModelLoadError
from bot.models import qkernel
from bot.models.batching import SoftPrompt
from bot.models.local_loader import LoadedModel, load_for_serving, load_local_model, load_native_model
from bot.models.native import ops
from bot.models.native.adapters import NativeAdapterBank
from bot.models.native.tokenizer import PROBE_CHATS, mismatches
from bot.models.runtime import LocalRuntime, base_info
from bot.settings import ModelSettings
from tests.conftest import MODEL_CACHE
from tests.rows import collect, encode, run_rows, scheduler

pytestmark = pytest.mark.model

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=10, repetition_penalty=1.0)
QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a poem about the sea."]


def kernels_built() -> bool:
    return qkernel.load(MODEL_CACHE / "kernels") is not None and ops.load(MODEL_CACHE / "kernels") is not None


needs_compiler = pytest.mark.skipif(not kernels_built(), reason="no C compiler or no AVX2: the native engine "
                                    "serves float32 weights with torch operations here")


def native(quantize: str = "none", *, c_ops: bool = True) -> LoadedModel:
    loaded = load_native_model(ModelSettings(quantize=quantize), MODEL_CACHE)  # type: ignore[arg-type]
    assert loaded.engine == "native"
    if not c_ops:
        loaded.model.ops = None
    return loaded


# -- tokenizer ----------------------------------------------------------------------------------------


def test_the_tokenizer_artifact_renders_and_tokenizes_like_transformers(local_model: LoadedModel) -> None:
    ours = native().tokenizer
    reference = local_model.tokenizer
    assert mismatches(ours, reference) == []
    roles = ["system", "user", "assistant"]
    words = ["Hi", "ünï 日本 🙂", "  spaced\n\nout ", "<|im_end|>", "{{ x }}", "", "a" * 300]
    gen = torch.Generator().manual_seed(0)
    for n in range(60):  # many message lists: every length, role order and odd content
        size = 1 + n % 6
        chat = [{"role": roles[int(torch.randint(3, (1,), generator=gen))],
                 "content": " ".join(words[int(i)] for i in torch.randint(len(words), (3,), generator=gen))}
                for _ in range(size)]
        for generation in (False, True):
            expected = reference.apply_chat_template(chat, add_generation_prompt=generation, return_dict=True)
            assert ours.apply_chat_template(chat, add_generation_prompt=generation) == list(expected["input_ids"])
            assert ours.render(chat, add_generation_prompt=generation) == reference.apply_chat_template(
                chat, add_generation_prompt=generation, tokenize=False)
    ids = reference.apply_chat_template(PROBE_CHATS[3], return_dict=True)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert (ours.eos_token_id, ours.pad_token_id) == (reference.eos_token_id, reference.pad_token_id)


# -- float32: the same greedy tokens as transformers ---------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two random LoRA adapters saved by PEFT, a PeftModel holding both (the reference), a soft prompt."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    loaded = load_local_model(ModelSettings(), MODEL_CACHE)
    torch.manual_seed(0)
    first = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(loaded.model, first, adapter_name="one")
    torch.manual_seed(1)
    model.add_adapter("two", LoraConfig(r=8, lora_alpha=16, use_rslora=True, init_lora_weights=False,
                                        target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"]))
    model.eval()
    for name in ("one", "two"):
        model.save_pretrained(str(root), selected_adapters=[name])  # -> root/<name> for non-default names
    soft = SoftPrompt("random", torch.randn(4, loaded.model.config.hidden_size,
                                            generator=torch.Generator().manual_seed(0)) * 0.5)
    return {"root": root, "peft": model, "tokenizer": loaded.tokenizer, "soft": soft}


def adapter_dir(adapters: dict[str, Any], name: str) -> Path:
    root: Path = adapters["root"]
    return root / name if (root / name / "adapter_config.json").is_file() else root


def mixed_rows(loaded: LoadedModel, soft: SoftPrompt, names: dict[str, str]) -> list[dict[str, Any]]:
    ids = [encode(loaded, q) for q in QUESTIONS]
    return [
        {"input_ids": ids[0], "params": GREEDY},
        {"input_ids": ids[1], "params": GREEDY, "lora": names["one"]},
        {"input_ids": ids[2], "params": GREEDY, "lora": names["two"]},
        {"input_ids": ids[2], "params": GREEDY, "soft_prompt": soft},
        {"input_ids": ids[0], "params": GREEDY, "lora": names["one"], "soft_prompt": soft},
    ]


def with_loras(loaded: LoadedModel, adapters: dict[str, Any]) -> dict[str, str]:
    from bot.adapters.spec import BaseModelInfo

    # the adapters name the model by the path they were trained on (the test cache's)
    trained_on = str(MODEL_CACHE / "models" / loaded.source.name)
    bank = NativeAdapterBank(loaded.model, BaseModelInfo.of(loaded.model, loaded.name, trained_on))
    return {name: bank.ensure(adapter_dir(adapters, name)).name for name in ("one", "two")}


@pytest.fixture(scope="module")
def reference_tokens(adapters: dict[str, Any]) -> list[tuple[int, ...]]:
    """The mixed batch through transformers' own forward (PEFT's mixed-batch LoRA)."""
    loaded = native()  # only for the prompts: same ids as transformers (tested above)
    rows = mixed_rows(loaded, adapters["soft"], {"one": "one", "two": "two"})
    tokens = asyncio.run(run_rows(adapters["peft"], adapters["tokenizer"], rows, fast_decode=False))
    assert len(set(tokens)) == len(rows)  # every adapter really changes the reply
    return tokens


@pytest.mark.parametrize("c_ops", [pytest.param(True, marks=needs_compiler), False], ids=["c-ops", "torch-ops"])
async def test_native_float32_gives_transformers_tokens_for_base_lora_and_soft_prompt_rows(
    adapters: dict[str, Any], reference_tokens: list[tuple[int, ...]], c_ops: bool
) -> None:
    loaded = native(c_ops=c_ops)
    rows = mixed_rows(loaded, adapters["soft"], with_loras(loaded, adapters))
    assert await run_rows(loaded.model, loaded.tokenizer, rows) == reference_tokens
    assert await run_rows(loaded.model, loaded.tokenizer, rows[:3], batched=False) == reference_tokens[:3]


# -- quantized weights ----------------------------------------------------------------------------------


@needs_compiler
def test_gguf_blocks_are_the_float32_reference_weights_bit_for_bit(local_model: LoadedModel) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    from bot.models.qkernel import blocks_of

    model = native("gguf").model
    assert model.weights == "gguf"
    reference = dict(local_model.model.named_parameters())
    layer = model.layers[7]
    for linear, names in [(layer.qkv, ["q_proj", "k_proj", "v_proj"]), (layer.o, ["o_proj"])]:
        weights = torch.cat([reference[f"model.layers.7.self_attn.{n}.weight"] for n in names])
        assert linear.kind == "q4_1"
        assert torch.equal(linear.dequantized(), weights)  # the C dequantizer, from the planes
        raw = blocks_of(linear.planes).numpy()  # the GGUF's own bytes again
        assert torch.equal(torch.from_numpy(gguf_dequantize(raw, GGMLQuantizationType.Q4_1)), weights)  # gguf-py
        x = torch.randn(5, linear.in_features, generator=torch.Generator().manual_seed(1))
        out = linear(x)
        assert torch.allclose(out, x @ weights.T, rtol=1e-5, atol=1e-5)
        for i in range(5):  # a row's result never depends on the rows next to it
            assert torch.equal(linear(x[i : i + 1].contiguous())[0], out[i])
    head = reference["model.embed_tokens.weight"]  # tied: the head is the GGUF's Q8_0 token embeddings
    assert model.head.kind == "q8_0" and torch.equal(model.head.dequantized(), head)
    raw = blocks_of(model.head.planes).numpy()
    assert torch.equal(torch.from_numpy(gguf_dequantize(raw, GGMLQuantizationType.Q8_0)), head)


@needs_compiler
async def test_gguf_blocks_decode_the_float32_reference_tokens(adapters: dict[str, Any],
                                                               reference_tokens: list[tuple[int, ...]]) -> None:
    loaded = native("gguf")
    rows = mixed_rows(loaded, adapters["soft"], with_loras(loaded, adapters))
    assert await run_rows(loaded.model, loaded.tokenizer, rows) == reference_tokens  # per-layer C calls (LoRA)
    # rows without a LoRA decode in one C call per step
    plain = [rows[0], rows[3]]
    assert await run_rows(loaded.model, loaded.tokenizer, plain) == [reference_tokens[0], reference_tokens[3]]
    assert await run_rows(loaded.model, loaded.tokenizer, plain, batched=False) == [reference_tokens[0],
                                                                                    reference_tokens[3]]


@needs_compiler
async def test_native_int8_gives_the_transformers_int8_tokens_and_keeps_the_loss(local_model: LoadedModel) -> None:
    from bot.models.local_loader import quantize_for_serving

    loaded = native("int8")
    assert loaded.model.weights == "int8"
    hf = quantize_for_serving(load_local_model(ModelSettings(), MODEL_CACHE), ModelSettings(quantize="int8"),
                              MODEL_CACHE)
    rows = [{"input_ids": encode(loaded, q), "params": GREEDY} for q in QUESTIONS]
    assert await run_rows(loaded.model, loaded.tokenizer, rows) == await run_rows(hf.model, hf.tokenizer, rows)
    chat = [{"role": "user", "content": "How do I boil an egg?"},
            {"role": "assistant", "content": "Put the egg in boiling water for about nine minutes, then cool it."}]
    ids = loaded.tokenizer.apply_chat_template(chat)
    prompt = len(loaded.tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True))

    def loss(model: Any) -> float:
        with torch.inference_mode():
            logits = (model(input_ids=torch.tensor([ids])).logits[0] if hasattr(model, "generate") else
                      _all_logits(model, ids))
        return float(torch.nn.functional.cross_entropy(logits[prompt - 1 : -1], torch.tensor(ids[prompt:])))

    reference, quantized = loss(local_model.model), loss(loaded.model)
    assert abs(quantized - reference) / reference <= 0.02, (reference, quantized)


def _all_logits(model: Any, ids: list[int]) -> Any:
    return model.forward(None, [None], model.embed_tokens(ids)[None], None, torch.arange(len(ids))[None],
                         every_position=True)[0][0]


# -- serving features on the native engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> LoadedModel:
    return native("gguf" if kernels_built() else "none")


async def test_prompt_cache_and_cancellation_on_the_native_engine(served: LoadedModel) -> None:
    tokenizer = served.tokenizer
    messages = [{"role": "system", "content": "You are a pirate. Answer briefly."},
                {"role": "user", "content": "Where is the treasure?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    from bot.models.batching import chat_prefix_length

    prefix = chat_prefix_length(tokenizer, messages, 1, ids)
    assert prefix > 0
    with scheduler(served.model, tokenizer, max_batch=2) as s:
        uncached = await collect(s.submit(ids, GREEDY, prefix_len=prefix, cache_tag="pirate"))
        cached = await collect(s.submit(ids, GREEDY, prefix_len=prefix, cache_tag="pirate"))
        assert (uncached.cached_tokens, cached.cached_tokens) == (0, prefix)
        assert cached.token_ids == uncached.token_ids
        long = GREEDY.model_copy(update={"max_new_tokens": 200})
        stream = s.submit(encode(served, "Tell me a very long story."), long)
        async for _ in stream:
            break  # decoding: the row holds a slot
        await stream.aclose()
        async with asyncio.timeout(30):
            while s.active:  # freed at the next step (a worker thread: no event to await)  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert (await collect(s.submit(ids, GREEDY))).token_ids == uncached.token_ids


async def test_a_failing_native_decode_step_fails_its_rows_and_the_next_reply_works(served: LoadedModel) -> None:
    model = served.model
    original = model.head  # every decode step calls it, whichever C path ran the layers
    armed = {"calls": 0}

    def explode(x: Any, out: Any = None) -> Any:
        armed["calls"] += 1
        if armed["calls"] > 6:  # a decode step, after a few steps
            raise RuntimeError("injected decode fault")
        return original(x, out)

    prompts = [encode(served, q) for q in QUESTIONS[:2]]
    with scheduler(model, served.tokenizer, max_batch=4) as s:
        alone = (await collect(s.submit(prompts[0], GREEDY))).token_ids
        model.head = explode
        try:
            results = await asyncio.gather(*(collect(s.submit(p, GREEDY.model_copy(update={"max_new_tokens": 40})))
                                             for p in prompts), return_exceptions=True)
        finally:
            model.head = original
        assert all(isinstance(r, ModelError) and "injected decode fault" in str(r) for r in results), results
        assert (await collect(s.submit(prompts[0], GREEDY))).token_ids == alone


async def test_nan_scores_fail_one_native_row_only(served: LoadedModel) -> None:
    model = served.model
    head = model.head
    prompts = [encode(served, q) for q in QUESTIONS]

    def poisoned(x: Any, out: Any = None) -> Any:
        logits = head(x, out)
        if logits.shape[0] > 1:
            logits[1] = float("nan")  # the second row of every call with several
        return logits

    with scheduler(model, served.tokenizer, max_batch=1) as s:
        alone = [(await collect(s.submit(p, GREEDY))).token_ids for p in prompts]
    model.head = poisoned
    try:
        with scheduler(model, served.tokenizer, max_batch=8) as s:
            results = await asyncio.gather(*(collect(s.submit(p, GREEDY)) for p in prompts), return_exceptions=True)
    finally:
        model.head = head
    failed = [i for i, r in enumerate(results) if isinstance(r, ModelError)]
    assert failed and len(failed) < len(prompts)
    for i, result in enumerate(results):
        if not isinstance(result, BaseException):
            assert result.token_ids == alone[i]


def test_sync_invoke_on_the_native_engine_goes_through_the_scheduler(served: LoadedModel) -> None:
    runtime = LocalRuntime(served)
    try:
        messages = [{"role": "user", "content": "Name a colour."}]
        text, result = runtime.generate_blocking(messages, GREEDY)
    finally:
        runtime.close()
    assert text and result.prompt_tokens == len(runtime.encode_chat(messages))
    assert runtime.scheduler.stats.finished == 1
    with pytest.raises(ModelError, match="transformers engine"):
        runtime.generate_rows([], GREEDY)


# -- choosing the engine ---------------------------------------------------------------------------------


def test_an_adapter_only_peft_computes_sends_the_model_to_transformers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, adapters: dict[str, Any]
) -> None:
    import shutil

    root = tmp_path / "adapters"
    shutil.copytree(adapter_dir(adapters, "one"), root / "plain")
    assert load_for_serving(ModelSettings(quantize="none"), MODEL_CACHE, root).engine == "native"
    shutil.copytree(adapter_dir(adapters, "one"), root / "dora")
    config = json.loads((root / "dora" / "adapter_config.json").read_text())
    (root / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with caplog.at_level(logging.WARNING):
        loaded = load_for_serving(ModelSettings(quantize="none"), MODEL_CACHE, root)
    assert loaded.engine == "transformers"
    assert "use_dora" in caplog.text and "dora" in caplog.text
    with pytest.raises(ModelLoadError, match="use_dora"):  # forced native: the adapter is the problem, said so
        model = native()
        NativeAdapterBank(model.model, base_info(model)).ensure(root / "dora")


def test_an_architecture_the_native_forward_lacks_is_served_by_transformers(tmp_path: Path) -> None:
    from bot.models.native.config import NotNative, read_shape

    config = json.loads((native().source / "config.json").read_text())
    assert read_shape(config).num_layers == 30
    for change in ({"model_type": "gpt2"}, {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
                   {"attention_bias": True}, {"sliding_window": 4096}):
        with pytest.raises(NotNative):
            read_shape({**config, **change})


# -- without a C compiler ---------------------------------------------------------------------------------


async def test_without_a_compiler_the_native_engine_serves_float32_with_torch_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapters: dict[str, Any], reference_tokens: list[tuple[int, ...]]
) -> None:
    from bot.models import cbuild

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to((MODEL_CACHE / "models").resolve())  # the converted model, no kernels
    monkeypatch.setattr(cbuild, "find_compiler", lambda: None)
    loaded = load_native_model(ModelSettings(quantize="gguf"), data)
    assert (loaded.model.weights, loaded.model.ops) == ("float32", None)
    assert not (data / "kernels").exists() or not list((data / "kernels").iterdir())
    rows = mixed_rows(loaded, adapters["soft"], with_loras(loaded, adapters))
    assert await run_rows(loaded.model, loaded.tokenizer, rows) == reference_tokens


@needs_compiler
def test_the_c_operations_compute_what_torch_computes() -> None:
    c = ops.load(MODEL_CACHE / "kernels")
    assert c is not None
    gen = torch.Generator().manual_seed(3)
    rows, n = 3, 1536
    gate_up = torch.randn(rows, 2 * n, generator=gen) * 4
    act = torch.empty(rows, n)
    c.silu_mul(gate_up.data_ptr(), act.data_ptr(), rows, n)
    assert torch.allclose(act, torch.nn.functional.silu(gate_up[:, :n]) * gate_up[:, n:], rtol=1e-6, atol=1e-6)
    hidden, weight, out = torch.randn(rows, 576, generator=gen), torch.randn(576, generator=gen), torch.empty(rows, 576)
    c.rms_norm(hidden.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, 576, 1e-5)
    assert torch.allclose(out, torch.nn.functional.rms_norm(hidden, (576,), weight, 1e-5), rtol=1e-5, atol=1e-6)
    # attention over a left-padded cache: padding columns get no weight
    kv_heads, group, dim, length, capacity = 3, 3, 64, 7, 10
    qkv = torch.randn(rows, (kv_heads * group + 2 * kv_heads) * dim, generator=gen)
    keys, values = torch.randn(rows, kv_heads, capacity, dim, generator=gen), torch.randn(rows, kv_heads, capacity, dim,
                                                                                        generator=gen)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, :3] = 0
    attn = torch.empty(rows, kv_heads * group * dim)
    c.attend(qkv.data_ptr(), qkv.shape[1], keys.data_ptr(), values.data_ptr(), capacity, length, mask.data_ptr(),
             length, attn.data_ptr(), rows, kv_heads, group, dim, dim**-0.5, 1)
    q = qkv[:, : kv_heads * group * dim].view(rows, kv_heads, group, dim)
    scores = (q @ keys[:, :, :length].transpose(-1, -2)) * dim**-0.5
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    expected = (torch.softmax(scores, dim=-1) @ values[:, :, :length]).reshape(rows, -1)
    assert torch.allclose(attn, expected, rtol=1e-5, atol=1e-5)
