"""Quantized weights vs the float32 reference: held-out loss of the shipped personas.

    .venv/bin/python bench/quantized.py [--record]

Held-out loss is computed exactly as bench/adapters_compare.py does (the chats held out of the
captain adapters' training, each in the persona's own prompt, through the serving inputs): on the
float32 model (transformers, the reference), with int8 weights (`quantize_for_serving`,
BOT_MODEL__QUANTIZE=int8) and on the native engine with the GGUF's own 4-bit blocks
(BOT_MODEL__QUANTIZE=gguf, the default): hard prompt, soft prompt and LoRA (applied on top of the
quantized base). The rule (issue #14): a quantization may be the default only if every persona's
held-out loss rises by at most 2% and the shipped eval suites still pass (`python -m bot eval`, run
separately with each setting; see BENCHMARKS.md). The GGUF blocks are the reference's own weights,
so their column differs from float32 only by the order of float additions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.adapters_compare import (  # noqa: E402
    Variant,
    adapter_of,
    card_of,
    context_of,
    held_out_chats,
    reply_loss,
)
from bench.common import machine_line, record_section  # noqa: E402
from bot.models.local import LocalRuntime  # noqa: E402
from bot.models.local_loader import load_local_model, load_native_model, quantize_for_serving  # noqa: E402
from bot.personas.loader import load_directory  # noqa: E402
from bot.settings import ModelSettings, Settings  # noqa: E402
from bot.training.data import ChatExample, with_context  # noqa: E402
from bot.training.encoding import IGNORE, encode  # noqa: E402


def mean_loss(runtime: LocalRuntime, variant: Variant, chats: list[ChatExample], tokenizer: object) -> float:
    parts = [(native_reply_loss if runtime.native else reply_loss_of)(runtime, variant, chat, tokenizer)
             for chat in chats]
    return sum(loss for loss, _ in parts) / sum(n for _, n in parts)


def reply_loss_of(runtime: LocalRuntime, variant: Variant, chat: ChatExample, _: object) -> tuple[float, int]:
    return reply_loss(runtime, variant, chat)


def native_reply_loss(runtime: LocalRuntime, variant: Variant, chat: ChatExample,
                      tokenizer: object) -> tuple[float, int]:
    """reply_loss on the native engine: the same inputs (ids from transformers' tokenizer, which the
    native one reproduces), soft prompt first, the row's LoRA, every position's logits."""
    import torch

    encoded = encode(tokenizer, with_context(chat, context_of(variant.persona)), max_length=4096)
    assert encoded is not None
    adapter = adapter_of(runtime, variant)
    model = runtime.loaded.model
    embeds = model.embed_tokens(encoded.input_ids)
    virtual = 0
    if adapter is not None and adapter.prompt is not None:
        embeds, virtual = torch.cat([adapter.prompt, embeds]), adapter.virtual_tokens
    lora = adapter.name if adapter is not None and adapter.kind == "lora" else None
    targets = torch.tensor([IGNORE] * virtual + encoded.labels)
    with torch.inference_mode():
        logits = model.forward(None, [lora], embeds[None], None, torch.arange(embeds.shape[0])[None],
                               every_position=True)[0][0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], ignore_index=IGNORE, reduction="sum")
    return float(loss), int((targets[1:] != IGNORE).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("training_data/captain.jsonl"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    data_dir = args.data_dir or settings.data_dir
    personas = load_directory(settings.personas_dir).personas
    variants = [Variant("hard prompt (captain)", personas["captain"], None),
                Variant("soft prompt (captain-soft)", personas["captain-soft"], personas["captain-soft"].adapter),
                Variant("LoRA (captain-lora)", personas["captain-lora"], personas["captain-lora"].adapter)]
    card = card_of(variants[2])
    assert card is not None
    chats = held_out_chats(args.data, card)
    results: dict[str, list[float]] = {}
    tokenizer = None
    for kind in ("none", "int8", "gguf"):
        model_settings = ModelSettings(quantize=kind)
        if kind == "gguf":
            loaded = load_native_model(model_settings, data_dir)
        else:
            loaded = quantize_for_serving(load_local_model(model_settings, data_dir), model_settings, data_dir)
            tokenizer = loaded.tokenizer
        expected = {"none": "float32", "int8": "int8", "gguf": "gguf"}[kind]
        if loaded.weights != expected:
            sys.exit(f"{expected} weights could not be used here (no C compiler or no AVX2): nothing to compare")
        runtime = LocalRuntime(loaded, model_settings)
        results[loaded.weights] = [mean_loss(runtime, v, chats, tokenizer) for v in variants]
        runtime.close()
        print(loaded.weights, results[loaded.weights], flush=True)
    lines = [f"Command: `.venv/bin/python bench/quantized.py{' --record' if args.record else ''}` "
             f"({len(chats)} held-out chats; cross-entropy per reply token; rule: ≤ +2%)", "",
             "| persona | float32 | int8 | change | GGUF Q4_1 blocks (native) | change |",
             "|---|---:|---:|---:|---:|---:|"]
    worst = {"int8": 0.0, "gguf": 0.0}
    for i, variant in enumerate(variants):
        reference = results["float32"][i]
        cells = []
        for kind in ("int8", "gguf"):
            change = (results[kind][i] - reference) / reference
            worst[kind] = max(worst[kind], change)
            cells.append(f"{results[kind][i]:.4f} | {change * 100:+.2f}%")
        lines.append(f"| {variant.label} | {reference:.4f} | {' | '.join(cells)} |")
    lines += ["", f"Largest rise: int8 {worst['int8'] * 100:+.2f}%, GGUF blocks {worst['gguf'] * 100:+.3f}% "
              "(limit +2%).", "", machine_line()]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record_section("Quantized weights vs float32: held-out loss of the shipped personas", body)


if __name__ == "__main__":
    main()
