"""The fast serving paths against their references, with the real SmolLM2:

* the fast decode step (float32) gives the same greedy tokens as transformers' forward, for plain,
  LoRA and soft-prompt rows in one batch;
* the int8 kernel computes what its dequantized weights compute, row by row independently of the batch;
* int8 weights keep the model: held-out loss within 2% of float32, and batched int8 rows (LoRA on top)
  equal the same rows alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bot.domain.persona import GenerationParams
from bot.models import w8kernel
from bot.models.batching import SoftPrompt
from bot.models.local_loader import LoadedModel, load_local_model, quantize_for_serving
from bot.models.quant import is_quantized
from bot.settings import ModelSettings
from tests.conftest import MODEL_CACHE
from tests.rows import collect, encode, run_rows, scheduler

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=10, repetition_penalty=1.0)
QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a poem about the sea."]


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture(scope="module")
def kernel(kernel_dir: Path) -> w8kernel.W8Kernel:
    built = w8kernel.load(kernel_dir / "kernels")
    if built is None:
        pytest.skip("no C compiler or no AVX2 here: the int8 path is off (the model stays float32)")
    return built


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return torch.round(weight / scales[:, None]).to(torch.int8).contiguous(), scales.contiguous()


@pytest.mark.parametrize(("n", "k"), [(64, 576), (13, 37), (4, 8)])
def test_int8_kernel_matches_its_dequantized_weights_row_by_row(kernel: w8kernel.W8Kernel, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n * k)
    weight = torch.randn(n, k, generator=gen)
    qweight, scales = quantize(weight)
    x = torch.randn(5, k, generator=gen)
    reference = x @ (qweight.float() * scales[:, None]).T
    together = kernel.matmul(x, qweight, scales)
    assert torch.allclose(together, reference, atol=1e-4, rtol=1e-4)
    for i in range(5):  # a row's result never depends on which rows share its call
        assert torch.equal(kernel.matmul(x[i : i + 1].contiguous(), qweight, scales)[0], together[i])


def lora_model(loaded: LoadedModel) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(loaded.model, config, adapter_name="one")
    torch.manual_seed(1)
    model.add_adapter("two", LoraConfig(r=8, lora_alpha=16, target_modules=["k_proj", "o_proj", "gate_proj"],
                                        init_lora_weights=False))
    model.eval()
    return model


def mixed_rows(loaded: LoadedModel) -> list[dict[str, Any]]:
    soft = SoftPrompt("random", torch.randn(4, loaded.model.config.hidden_size,
                                            generator=torch.Generator().manual_seed(0)) * 0.5)
    ids = [encode(loaded, q) for q in QUESTIONS]
    return [
        {"input_ids": ids[0], "params": GREEDY},
        {"input_ids": ids[1], "params": GREEDY, "lora": "one"},
        {"input_ids": ids[2], "params": GREEDY, "lora": "two"},
        {"input_ids": ids[2], "params": GREEDY, "soft_prompt": soft},
        {"input_ids": ids[0], "params": GREEDY, "lora": "one", "soft_prompt": soft},
    ]


@pytest.mark.model
async def test_fast_decode_gives_transformers_tokens_for_plain_lora_and_soft_prompt_rows() -> None:
    loaded = load_local_model(ModelSettings(), MODEL_CACHE)  # private: PEFT wraps it in place
    model = lora_model(loaded)
    rows = mixed_rows(loaded)
    reference = await run_rows(model, loaded.tokenizer, rows, batched=True, fast_decode=False)
    fast = await run_rows(model, loaded.tokenizer, rows, batched=True, fast_decode=True)
    assert fast == reference
    assert len(set(reference)) == len(rows)  # every adapter really changes the reply


@pytest.fixture(scope="module")
def int8_model(kernel: w8kernel.W8Kernel, kernel_dir: Path) -> LoadedModel:
    loaded = quantize_for_serving(load_local_model(ModelSettings(), MODEL_CACHE), ModelSettings(quantize="int8"),
                                  kernel_dir)
    assert loaded.weights == "int8" and is_quantized(loaded.model)
    return loaded


def reply_loss(model: Any, tokenizer: Any, chat: list[dict[str, str]]) -> tuple[float, int]:
    """Summed cross-entropy of the assistant's reply tokens given the chat before it."""
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(chat, return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1]
    targets = ids[0, 1:].clone()
    targets[: len(prompt) - 1] = -100
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return float(loss), int((targets != -100).sum())


CHATS = [
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": q},
     {"role": "assistant", "content": a}]
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris, on the Seine."),
        ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
        ("Name three colours.", "Red, green and blue."),
        ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
    ]
]


@pytest.mark.model
def test_int8_weights_keep_the_held_out_loss_within_two_percent(local_model: LoadedModel,
                                                                 int8_model: LoadedModel) -> None:
    def mean_loss(model: Any) -> float:
        parts = [reply_loss(model, local_model.tokenizer, chat) for chat in CHATS]
        return sum(loss for loss, _ in parts) / sum(n for _, n in parts)

    reference, quantized = mean_loss(local_model.model), mean_loss(int8_model.model)
    assert abs(quantized - reference) / reference <= 0.02, (reference, quantized)


@pytest.mark.model
async def test_int8_batched_rows_with_lora_on_top_equal_the_rows_alone(int8_model: LoadedModel,
                                                                      local_model: LoadedModel) -> None:
    model = lora_model(int8_model)  # PEFT wraps the int8 QuantLinear layers
    rows = mixed_rows(int8_model)
    alone = await run_rows(model, int8_model.tokenizer, rows, batched=False)
    together = await run_rows(model, int8_model.tokenizer, rows, batched=True)
    assert together == alone
    # The fused q/k/v and gate/up kernel calls + LoRA deltas compute what PEFT's own forward does.
    assert await run_rows(model, int8_model.tokenizer, rows, batched=True, fast_decode=False) == together
    # Bounded divergence from float32: the plain row's reply starts like the float32 model's.
    with scheduler(local_model.model, local_model.tokenizer) as s:
        reference = await collect(s.submit(**rows[0]))
    assert together[0][:3] == reference.token_ids[:3]


@pytest.mark.model
def test_int8_weights_cached_on_disk_load_back_identically(kernel: w8kernel.W8Kernel, int8_model: LoadedModel,
                                                           tmp_path: Path) -> None:
    from bot.models.quant import quantize_linears

    cache = tmp_path / "int8-weights.safetensors"
    first = load_local_model(ModelSettings(), MODEL_CACHE)
    quantize_linears(first.model, kernel, cache)  # quantizes and writes the cache
    second = load_local_model(ModelSettings(), MODEL_CACHE)
    quantize_linears(second.model, kernel, cache)  # reads it back
    assert cache.is_file()
    ids = torch.tensor([encode(first, QUESTIONS[0])])
    with torch.inference_mode():
        assert torch.equal(first.model(input_ids=ids).logits, second.model(input_ids=ids).logits)
    cache.write_bytes(b"torn")  # an unreadable cache is ignored and rewritten, never fatal
    third = load_local_model(ModelSettings(), MODEL_CACHE)
    quantize_linears(third.model, kernel, cache)
    assert is_quantized(third.model) and cache.stat().st_size > 1000
