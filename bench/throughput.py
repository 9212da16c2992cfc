"""Local-model serving throughput: N concurrent conversations, continuous batching vs one at a time.

    .venv/bin/python bench/throughput.py [--conversations 1,2,4,8] [--turns 2] [--max-new-tokens 64] [--record]

Every conversation uses the same persona (a ~150-token system prompt, served from the prompt cache)
and greedy decoding, so both modes generate exactly the same tokens. A turn is a wave: every
conversation sends its next message at the same moment (the worst case for time to first token) and
the turn ends when every reply is complete. "Sequential" is the same scheduler with max_batch=1: the
same requests, arriving the same way, answered one at a time (the pre-batching behaviour). The two
modes alternate turn by turn in one process, so a burst of load from elsewhere on a shared machine
hits both alike. With mixed adapters, conversations rotate over the base model, two LoRA adapters and
a soft prompt on one PeftModel. TTFT = submit -> first token chosen (queueing included). Appends a
section to BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.domain.persona import GenerationParams  # noqa: E402
from bot.models.batching import BatchScheduler, Finished, SoftPrompt, chat_prefix_length  # noqa: E402
from bot.models.local_loader import LoadedModel, load_local_model  # noqa: E402
from bot.settings import ModelSettings  # noqa: E402

SYSTEM = (
    "You are Ada, a friendly and knowledgeable assistant in a busy community Discord server. "
    "You answer questions about cooking, travel, science, history, programming and everyday life. "
    "Be warm and encouraging, explain your reasoning step by step, and give concrete examples. "
    "When a question is ambiguous, state the most likely interpretation and answer that. "
    "Never invent facts; if you are not sure, say so plainly and suggest where to look. "
    "Keep answers focused, use short paragraphs, and avoid jargon unless the user asks for detail. "
    "You are talking to {user} in #general. Today is Saturday."
)
QUESTIONS = [
    "Explain in detail how bread rises and what yeast does.",
    "Describe a three-day trip to Rome for a first-time visitor.",
    "Why do the seasons change? Explain it step by step.",
    "What were the main causes of the French Revolution?",
    "How does a hash map work internally? Give an example.",
    "Give me a detailed plan to start running regularly.",
    "Explain how vaccines train the immune system.",
    "How do I make a good tomato sauce from scratch?",
]
PARAMS = GenerationParams(temperature=0.0, max_new_tokens=64, repetition_penalty=1.1)


def load(data_dir: Path, threads: int | None) -> LoadedModel:
    return load_local_model(ModelSettings(threads=threads), data_dir)


def persona_messages(question: str, user: str = "Sam") -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM.format(user=user)}, {"role": "user", "content": question}]


def encode(loaded: LoadedModel, messages: list[dict[str, str]]) -> tuple[list[int], int]:
    """(prompt tokens, length of the cacheable persona prefix)."""
    encoded = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = list(encoded["input_ids"])
    return ids, chat_prefix_length(loaded.tokenizer, messages, 1, ids)


@dataclass
class Run:
    wall_s: float = 0.0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    cached: int = 0
    rows: float = 0.0  # average rows per decode step

    @property
    def rate(self) -> float:
        return self.tokens / self.wall_s

    def ttft_ms(self) -> str:
        return f"{percentile(self.ttft, 50) * 1e3:.0f} / {percentile(self.ttft, 95) * 1e3:.0f}"


def adapter_kwargs(adapters: list[dict[str, Any]] | None, conversation: int) -> dict[str, Any]:
    return {} if not adapters else adapters[conversation % len(adapters)]


async def wave(scheduler: BatchScheduler, loaded: LoadedModel, conversations: int, turn: int,
               params: GenerationParams, run: Run, adapters: list[dict[str, Any]] | None = None) -> None:
    """Every conversation sends its next message at once; returns when every reply is complete."""

    async def conversation(c: int) -> None:
        ids, prefix = encode(loaded, persona_messages(QUESTIONS[(c + turn) % len(QUESTIONS)]))
        stream = scheduler.submit(ids, params, prefix_len=prefix, cache_tag="ada", **adapter_kwargs(adapters, c))
        async for item in stream:
            if isinstance(item, Finished):
                run.tokens += item.completion_tokens
                run.cached += item.cached_tokens
                run.ttft.append(item.first_token_s or 0.0)

    started = time.perf_counter()
    await asyncio.gather(*(conversation(c) for c in range(conversations)))
    run.wall_s += time.perf_counter() - started


def measure(loaded: LoadedModel, conversations: int, turns: int, params: GenerationParams, *, batch: int,
            cache: bool = True, adapters: list[dict[str, Any]] | None = None) -> tuple[Run, Run]:
    """(one at a time, batched) on the same requests, interleaved turn by turn so that a burst of
    load from elsewhere on the machine hits both alike."""
    schedulers = [BatchScheduler(loaded.model, loaded.tokenizer, max_batch=b, max_queue=64, prompt_cache=cache)
                  for b in (1, batch)]
    runs = (Run(), Run())
    try:
        warm = params.model_copy(update={"max_new_tokens": 2})  # prompt cache and code paths
        for scheduler in schedulers:
            asyncio.run(wave(scheduler, loaded, len(adapters or [{}]), 0, warm, Run(), adapters))
        for turn in range(turns):
            order = (0, 1) if turn % 2 == 0 else (1, 0)
            for i in order:
                asyncio.run(wave(schedulers[i], loaded, conversations, turn, params, runs[i], adapters))
        runs[1].rows = schedulers[1].stats.decoded / max(1, schedulers[1].stats.steps)
        return runs
    finally:
        for scheduler in schedulers:
            scheduler.close()


def generate_reference(loaded: LoadedModel, params: GenerationParams) -> float:
    """transformers' generate() on one request (the pre-batching local path): tokens/s incl. prefill."""
    import torch

    ids, _ = encode(loaded, persona_messages(QUESTIONS[0]))
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(2):  # the first call pays one-time setup
            started = time.perf_counter()
            out = loaded.model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                        max_new_tokens=params.max_new_tokens,
                                        repetition_penalty=params.repetition_penalty,
                                        pad_token_id=loaded.tokenizer.pad_token_id)
            elapsed = time.perf_counter() - started
    return (out.shape[1] - len(ids)) / elapsed


def mixed_model(data_dir: Path, threads: int | None) -> tuple[LoadedModel, list[dict[str, Any]]]:
    """A private model copy in one PeftModel with two LoRA adapters, plus a soft prompt."""
    import torch
    from peft import LoraConfig, get_peft_model

    loaded = load(data_dir, threads)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                    init_lora_weights=False), adapter_name="one")
    model.add_adapter("two", LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    model.eval()
    soft = SoftPrompt("soft", torch.randn(16, loaded.model.config.hidden_size) * 0.1)
    loaded.model = model
    return loaded, [{}, {"lora": "one"}, {"lora": "two"}, {"soft_prompt": soft}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", default="1,2,4,8", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=2, help="messages per conversation")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="max_batch of the batched scheduler")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="converted-model cache")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-adapter runs")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    levels = [int(n) for n in args.conversations.split(",")]
    params = PARAMS.model_copy(update={"max_new_tokens": args.max_new_tokens})
    loaded = load(args.data_dir, args.threads)
    prompt_len = len(encode(loaded, persona_messages(QUESTIONS[0]))[0])

    rows = ["| conversations | sequential tok/s | batched tok/s | speed-up | TTFT p50 / p95 sequential (ms) "
            "| TTFT p50 / p95 batched (ms) | rows per step |", "|---|---|---|---|---|---|---|"]

    def add(label: str, seq: Run, bat: Run) -> None:
        line = (f"| {label} | {seq.rate:.1f} | {bat.rate:.1f} | **{bat.rate / seq.rate:.2f}×** | {seq.ttft_ms()} "
                f"| {bat.ttft_ms()} | {bat.rows:.1f} |")
        rows.append(line)
        print(line, flush=True)

    print("\n".join(rows), flush=True)
    reference = generate_reference(loaded, params)
    for n in levels:
        add(str(n), *measure(loaded, n, args.turns, params, batch=args.batch))
    top = max(levels)
    _, nocache = measure(loaded, top, 1, params, batch=args.batch, cache=False)
    notes = [f"- {top} conversations, batched, prompt cache OFF (one wave): {nocache.rate:.1f} tok/s, "
             f"TTFT p50 / p95 {nocache.ttft_ms()} ms.",
             f"- transformers `generate()`, one request (the pre-batching path): {reference:.1f} tok/s "
             "including its prefill."]
    if not args.no_mixed:
        del loaded
        mixed, adapters = mixed_model(args.data_dir, args.threads)
        seq, bat = measure(mixed, top, args.turns, params, batch=args.batch, adapters=adapters)
        add(f"{top}, mixed adapters", seq, bat)
        _, single = measure(mixed, top, args.turns, params, batch=args.batch, adapters=[{"lora": "one"}])
        change = 100 * (single.rate / bat.rate - 1)
        notes.append(f"- {top} conversations on one LoRA only (same PeftModel), batched: {single.rate:.1f} tok/s; "
                     f"per token, the mixed batch (base, 2 LoRA, soft prompt) took {change:+.0f}% time "
                     "vs that single-adapter batch.")
    print("\n".join(notes))
    if args.record:
        threads = args.threads or "all"
        body = (f"{machine_line()}\n\nCommand: `.venv/bin/python bench/throughput.py --conversations "
                f"{args.conversations} --turns {args.turns} --max-new-tokens {args.max_new_tokens} --record`"
                f" (torch threads: {threads}; SmolLM2-135M float32, {prompt_len}-token prompt, greedy, "
                f"max_batch {args.batch}, prompt cache on unless noted; targets: ≥3.5× at 8, p95 TTFT ≤ 2 s)\n\n"
                + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n")
        record_section("Local serving throughput: continuous batching vs one at a time", body)


if __name__ == "__main__":
    main()
