"""One persona three ways: hard prompt only vs soft prompt vs LoRA (Captain Redbeard by default).

    .venv/bin/python bench/adapters_compare.py [--ttft-runs 5] [--record]

For each variant, through the serving path (LocalRuntime + AdapterBank, as the bot runs it):
  held-out loss   cross-entropy per reply token on the chats held out of the adapters' training
                  (the same deterministic split as their cards), each chat in the variant's own
                  prompt: its system prompt, its few-shot examples, its soft prompt or LoRA
  prompt tokens   positions the model reads for one turn (template, system prompt, few-shot
                  examples, the user message, virtual tokens), mean over the held-out chats
  TTFT            median time to the first streamed text, greedy, over --ttft-runs questions
  artifact        adapter_model.safetensors (hard prompt: the persona's prompt text, UTF-8)
  training        seconds of training, from the adapter card

A "short prompt, no adapter" row shows what the adapters add to their own one-line prompt.
Prints a Markdown table; --record also appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402
from bot.adapters import LoadedAdapter, Row, build_batch  # noqa: E402
from bot.domain.messages import ChatMessage  # noqa: E402
from bot.domain.persona import GenerationParams, Persona  # noqa: E402
from bot.domain.prompt import example_messages  # noqa: E402
from bot.models.local import GenerationResult, LocalRuntime  # noqa: E402
from bot.models.local_loader import load_local_model  # noqa: E402
from bot.personas.loader import load_directory  # noqa: E402
from bot.settings import Settings  # noqa: E402
from bot.training.data import ChatExample, load_jsonl, split_holdout, training_system_prompt, with_context  # noqa: E402
from bot.training.encoding import IGNORE, encode  # noqa: E402


@dataclass(frozen=True)
class Variant:
    label: str
    persona: Persona
    adapter: str | None


@dataclass
class Measured:
    variant: Variant
    loss: float
    prompt_tokens: float
    ttft_s: float
    artifact: str
    training: str
    samples: list[str]


def held_out_chats(data: Path, card: dict[str, Any]) -> list[ChatExample]:
    examples, source = load_jsonl(data)
    trained_on = {s["name"]: s["sha256"] for s in card["data"]["sources"]}
    if trained_on.get(str(data)) != source.sha256:
        sys.exit(f"{data} is not the data the adapters were trained on (its sha256 differs from the card)")
    _, held = split_holdout(examples, card["data"]["held_out_fraction"], card["data"]["split_seed"])
    return held


def context_of(persona: Persona) -> list[ChatMessage]:
    """What the persona puts before a chat: its system prompt and few-shot turns."""
    return [ChatMessage("system", training_system_prompt(persona)), *example_messages(persona)]


def adapter_of(runtime: LocalRuntime, variant: Variant) -> LoadedAdapter | None:
    if variant.adapter is None:
        return None
    runtime.ensure_adapter(variant.persona.id, variant.adapter)
    return runtime.adapters.current(variant.adapter)


def reply_loss(runtime: LocalRuntime, variant: Variant, chat: ChatExample) -> tuple[float, int]:
    """Summed cross-entropy over the chat's reply tokens (and their count), from the serving inputs."""
    import torch

    encoded = encode(runtime.loaded.tokenizer, with_context(chat, context_of(variant.persona)), max_length=4096)
    assert encoded is not None
    row = Row(encoded.input_ids, adapter_of(runtime, variant))
    virtual = row.adapter.virtual_tokens if row.adapter else 0
    targets = torch.tensor([IGNORE] * virtual + encoded.labels)
    with torch.inference_mode():
        logits = runtime.adapters.generator(**build_batch(runtime.adapters, [row])).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], targets[1:], ignore_index=IGNORE, reduction="sum")
    return float(loss), int((targets[1:] != IGNORE).sum())


def first_turn(variant: Variant, chat: ChatExample) -> list[dict[str, str]]:
    return [m.to_dict() for m in (*context_of(variant.persona), chat.messages[0])]


async def time_to_first_text(runtime: LocalRuntime, variant: Variant, messages: list[dict[str, str]]) -> float:
    params = GenerationParams(
        temperature=0.0, max_new_tokens=8, repetition_penalty=variant.persona.generation.repetition_penalty
    )
    started = time.perf_counter()
    first = None
    async for item in runtime.stream(messages, params, variant.adapter):
        if first is None and not isinstance(item, GenerationResult):
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def artifact(variant: Variant) -> str:
    if variant.adapter is None:
        text = variant.persona.system_prompt + "".join(e.user + e.assistant for e in variant.persona.examples)
        return f"{len(text.encode())} B of prompt text"
    size = (Path(variant.adapter) / "adapter_model.safetensors").stat().st_size
    return f"{size / 1024:.0f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


def card_of(variant: Variant) -> dict[str, Any] | None:
    if variant.adapter is None:
        return None
    card: dict[str, Any] = json.loads((Path(variant.adapter) / "adapter_card.json").read_text())
    return card


def training_time(variant: Variant) -> str:
    card = card_of(variant)
    if card is None:
        return "-"
    seconds = int(card["training"]["seconds"])
    return f"{seconds // 60} min {seconds % 60} s ({card['training']['steps']} steps)"


def measure(
    runtime: LocalRuntime, variant: Variant, chats: list[ChatExample], ttft_runs: int, questions: list[str]
) -> Measured:
    losses = [reply_loss(runtime, variant, chat) for chat in chats]
    prompts = [first_turn(variant, chat) for chat in chats]
    adapter = adapter_of(runtime, variant)
    prompt_tokens = statistics.mean(Row(runtime.encode_chat(p), adapter).prompt_tokens for p in prompts)
    asyncio.run(time_to_first_text(runtime, variant, prompts[0]))  # warm-up
    ttft = statistics.median(asyncio.run(time_to_first_text(runtime, variant, p)) for p in prompts[:ttft_runs])
    sample_params = GenerationParams(
        temperature=0.0, max_new_tokens=48, repetition_penalty=variant.persona.generation.repetition_penalty
    )
    context = [m.to_dict() for m in context_of(variant.persona)]
    samples = [
        runtime.generate_blocking([*context, {"role": "user", "content": q}], sample_params, variant.adapter)[0]
        for q in questions
    ]
    return Measured(
        variant=variant,
        loss=sum(loss for loss, _ in losses) / sum(n for _, n in losses),
        prompt_tokens=prompt_tokens,
        ttft_s=ttft,
        artifact=artifact(variant),
        training=training_time(variant),
        samples=[s.strip() for s in samples],
    )


def table(results: list[Measured], chats: int, questions: list[str]) -> str:
    lines = [
        f"Held-out: {chats} chats never seen in training. Loss: cross-entropy per reply token (lower is better).",
        "",
        "| variant | persona | held-out loss | prompt tokens / turn | time to first token | artifact | training |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant.label} | `{r.variant.persona.id}` | {r.loss:.3f} | {r.prompt_tokens:.0f} | "
            f"{r.ttft_s * 1000:.0f} ms | {r.artifact} | {r.training} |"
        )
    for i, question in enumerate(questions):
        lines += ["", f"Greedy replies (48 tokens at most) to “{question}”:", ""]
        lines += [f"- **{r.variant.label}**: {r.samples[i]}" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hard", default="captain", help="Persona with the long hard prompt.")
    parser.add_argument("--soft", default="captain-soft", help="Persona with the soft prompt.")
    parser.add_argument("--lora", default="captain-lora", help="Persona with the LoRA adapter.")
    parser.add_argument("--data", type=Path, default=Path("training_data/captain.jsonl"))
    parser.add_argument("--ttft-runs", type=int, default=5)
    parser.add_argument(
        "--question",
        action="append",
        help="Show each variant's reply to this (repeatable; default: two held-out questions).",
    )
    parser.add_argument("--record", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()

    settings = Settings()
    personas = load_directory(settings.personas_dir).personas
    soft, lora = personas[args.soft], personas[args.lora]
    variants = [
        Variant("hard prompt only", personas[args.hard], None),
        Variant("short prompt, no adapter", soft, None),
        Variant("soft prompt", soft, soft.adapter),
        Variant("LoRA", lora, lora.adapter),
    ]
    cards = [card for card in map(card_of, variants) if card is not None]
    if len(cards) != 2 or cards[0]["data"] != cards[1]["data"]:
        sys.exit("the soft prompt and the LoRA adapter were trained on different data or splits")
    chats = held_out_chats(args.data, cards[0])
    runtime = LocalRuntime(load_local_model(settings.model, settings.data_dir))
    questions = args.question or ["How do I manage my time?", "What is a coral reef?"]
    results = [measure(runtime, v, chats, args.ttft_runs, questions) for v in variants]
    runtime.close()
    for r in results:
        card = card_of(r.variant)
        if card is not None:  # the serving path must reproduce the training run's own measurement
            print(f"{r.variant.label}: serving-path held-out loss {r.loss:.4f}, card {card['loss']['held_out_after']}")
    body = table(results, len(chats), questions) + "\n" + machine_line() + "\n"
    print(body)
    if args.record:
        record_section("Adapters: hard prompt vs soft prompt vs LoRA", body)


if __name__ == "__main__":
    main()
