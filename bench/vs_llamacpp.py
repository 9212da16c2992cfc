"""The local model next to llama.cpp on the same machine, same GGUF, same threads, greedy, in ONE run.

    .venv/bin/python bench/vs_llamacpp.py [--threads 2] [--rounds 3] [--record]
    (llama.cpp side: pip install -e '.[bench]', which builds llama-cpp-python from source)

Each round measures, alternating the engines so that a busy neighbour slows both alike (llama.cpp runs
in a process of its own, so neither engine's idle threads slow the other):

  decode, 1 conversation      tokens/s from the first to the last of --tokens greedy tokens
  8 conversations, aggregate  ours: 8 at once through the batch scheduler (llama-cpp-python serves one
                              at a time, so its one-conversation rate is the yardstick)
  batch 2 vs batch 1          ours: aggregate tokens/s of 2 conversations / of 1
  uncached TTFT               ~150-token prompt, nothing cached: prompt in -> first token out
  p95 TTFT at 8               ours: 8 messages at the same instant, persona prompt cached (the serving case)

Ours is the serving path (BatchScheduler) as the bot loads it by default: the native engine with the
GGUF's own 4-bit blocks. `--also` adds other configurations to the same rounds, e.g.
`--also transformers-int8` (the engine before the native one) or `native-none` (the float32 reference
on the native forward). Ratios are per round; the table shows each round's ratio and the median.
Without llama-cpp-python the llama.cpp rows print a skip line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.domain.persona import GenerationParams  # noqa: E402
from bot.models.batching import BatchScheduler, Finished, chat_prefix_length  # noqa: E402
from bot.models.local_loader import LoadedModel, default_model_location, load_for_serving  # noqa: E402
from bot.settings import ModelSettings  # noqa: E402

STORY = "Write a long story about a dragon who learns to bake bread."
SYSTEM = ("You are Captain Redbeard, a cheerful pirate captain of the good ship Marigold. You speak like a "
          "pirate, you love the sea, maps, parrots and treasure, and you answer every question with a short "
          "nautical story. Keep answers friendly and under a hundred words. Never break character, never "
          "mention that you are an AI, and always end with a pirate saying. Your crew: Salty Sam the cook, "
          "One-Eyed Lou the navigator and Polly the parrot.")
QUESTIONS = ["How do I manage my time?", "What is a coral reef?", "Why is the sea salty?", "Tell me a joke.",
             "What should I cook tonight?", "How do stars form?", "Name a good book.", "How do I learn to swim?"]


@dataclass
class Round:
    values: dict[str, float] = field(default_factory=dict)


class Ours:
    def __init__(self, loaded: LoadedModel, label: str) -> None:
        self.loaded, self.label = loaded, label

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                              return_dict=True)["input_ids"])

    def scheduler(self, **kwargs: Any) -> BatchScheduler:
        return BatchScheduler(self.loaded.model, self.loaded.tokenizer, **kwargs)

    async def decode_rate(self, tokens: int) -> float:
        return (await self.aggregate(1, tokens))[0]

    async def aggregate(self, conversations: int, tokens: int) -> tuple[float, list[float]]:
        """(aggregate tokens/s from the first token to the last, TTFTs) for n conversations at once."""
        params = GenerationParams(temperature=0.0, max_new_tokens=tokens, repetition_penalty=1.0)
        s = self.scheduler(max_batch=max(8, conversations))
        try:
            ids = [self.encode([{"role": "user", "content": f"{STORY} ({i})"}]) for i in range(conversations)]
            started = time.perf_counter()
            firsts: list[float] = []

            async def one(prompt: list[int]) -> int:
                async for item in s.submit(prompt, params):
                    if isinstance(item, Finished):
                        firsts.append(started + (item.first_token_s or 0.0))
                        return item.completion_tokens
                return 0

            counts = await asyncio.gather(*(one(p) for p in ids))
            ended = time.perf_counter()
        finally:
            s.close()
        decoded = sum(counts) - conversations  # the first token of each comes from prefill
        return decoded / (ended - max(firsts)), [f - started for f in firsts]

    async def ttft_uncached(self, prompt: list[dict[str, str]]) -> float:
        s = self.scheduler(prompt_cache=False)
        try:
            ids = self.encode(prompt)
            params = GenerationParams(temperature=0.0, max_new_tokens=1, repetition_penalty=1.0)
            started = time.perf_counter()
            async for item in s.submit(ids, params):
                if isinstance(item, Finished):
                    break
            return time.perf_counter() - started
        finally:
            s.close()

    async def ttft_p95_at_8(self) -> float:
        """8 messages at the same instant to a persona whose prompt is cached (one warm-up turn)."""
        params = GenerationParams(temperature=0.0, max_new_tokens=16, repetition_penalty=1.0)
        s = self.scheduler(max_batch=8)
        try:
            chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS]
            encoded = [self.encode(c) for c in chats]
            prefix = [chat_prefix_length(self.loaded.tokenizer, c, 1, ids)
                      for c, ids in zip(chats, encoded, strict=True)]
            async for _ in s.submit(encoded[0], params, prefix_len=prefix[0], cache_tag="captain"):
                pass

            async def first(i: int) -> float:
                started = time.perf_counter()
                async for item in s.submit(encoded[i], params, prefix_len=prefix[i], cache_tag="captain"):
                    if not isinstance(item, Finished):
                        return time.perf_counter() - started
                return time.perf_counter() - started

            return percentile(list(await asyncio.gather(*(first(i) for i in range(8)))), 95)
        finally:
            s.close()


class _LlamaCppModel:
    """llama-cpp-python itself; lives in its own process (see LlamaCpp)."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                         verbose=False)

    def decode_rate(self, text: str, tokens: int) -> float:
        prompt = self.llm.tokenize(text.encode(), special=True)
        self.llm.reset()
        first = None
        n = 0
        for _ in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            n += 1
            if first is None:
                first = time.perf_counter()
            if n >= tokens:
                break
        assert first is not None
        return (n - 1) / (time.perf_counter() - first)

    def ttft_uncached(self, text: str) -> float:
        prompt = self.llm.tokenize(text.encode(), special=True)
        self.llm.reset()
        started = time.perf_counter()
        for _ in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            break
        return time.perf_counter() - started


def _serve_llama(connection: Any, gguf: Path, threads: int) -> None:
    try:
        model = _LlamaCppModel(gguf, threads)
    except ImportError as exc:
        connection.send(exc)
        return
    connection.send("ready")
    while (request := connection.recv()) is not None:
        method, *args = request
        connection.send(getattr(model, method)(*args))


class LlamaCpp:
    """llama.cpp in a process of its own: in one process, whichever engine ran last left its thread
    pool spinning or its OpenMP team behind, and the other's 2-thread decode measured ~1.8× slower."""

    def __init__(self, gguf: Path, threads: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve_llama, args=(child, gguf, threads), daemon=True)
        self._process.start()
        answer = self._connection.recv()
        if isinstance(answer, ImportError):
            self._process.join()
            raise answer

    def _call(self, *request: Any) -> float:
        self._connection.send(request)
        return float(self._connection.recv())

    def decode_rate(self, text: str, tokens: int) -> float:
        return self._call("decode_rate", text, tokens)

    def ttft_uncached(self, text: str) -> float:
        return self._call("ttft_uncached", text)

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=10)


def load_ours(config: str, threads: int, data_dir: Path) -> Ours:
    """`config`: "<engine>-<quantize>", e.g. native-gguf (the default), transformers-int8, native-none."""
    engine, _, quantize = config.partition("-")
    settings = ModelSettings(threads=threads, engine=engine, quantize=quantize)  # type: ignore[arg-type]
    loaded = load_for_serving(settings, data_dir)
    return Ours(loaded, f"ours, {loaded.engine} {loaded.weights}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48, help="tokens decoded per conversation")
    parser.add_argument("--also", default="", help="more configurations, comma-separated: "
                        "transformers-int8, transformers-none, native-int8, native-none")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    engines = [load_ours(config, args.threads, args.data_dir)
               for config in ["native-gguf", *filter(None, args.also.split(","))]]
    directory, gguf = default_model_location()
    try:
        llama: LlamaCpp | None = LlamaCpp(directory / gguf, args.threads)
    except ImportError:
        llama = None
        print("SKIP llama.cpp: llama-cpp-python is not installed (pip install -e '.[bench]'); ours only")
    tokenizer = engines[0].loaded.tokenizer
    story_text = tokenizer.apply_chat_template([{"role": "user", "content": STORY}], add_generation_prompt=True,
                                               tokenize=False)
    long_prompt = [{"role": "system", "content": SYSTEM},
                   {"role": "user", "content": "Tell me about your ship, your crew and your last voyage."}]
    long_text = tokenizer.apply_chat_template(long_prompt, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(engines[0].encode(long_prompt))
    rounds: list[Round] = []
    for r in range(args.rounds):
        # Each measure of ours sits right next to llama.cpp's, so both see the same neighbours' load.
        row = Round()
        for engine in engines:
            tag = engine.label
            if llama is not None:
                row.values[f"{tag} llama decode"] = llama.decode_rate(story_text, args.tokens)
            row.values[f"{tag} decode"] = asyncio.run(engine.decode_rate(args.tokens))
            row.values[f"{tag} agg2"] = asyncio.run(engine.aggregate(2, args.tokens))[0]
            row.values[f"{tag} agg8"] = asyncio.run(engine.aggregate(8, args.tokens))[0]
            if llama is not None:
                row.values[f"{tag} llama decode 2"] = llama.decode_rate(story_text, args.tokens)
                row.values[f"{tag} llama ttft"] = llama.ttft_uncached(long_text)
            row.values[f"{tag} ttft"] = asyncio.run(engine.ttft_uncached(long_prompt))
            row.values[f"{tag} p95@8"] = asyncio.run(engine.ttft_p95_at_8())
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.values.items()), flush=True)
    if llama is not None:
        llama.close()
    body = report(rounds, engines, llama is not None, prompt_tokens, args)
    print(body)
    if args.record:
        record_section("Local model vs llama.cpp (same GGUF, same threads, one run)", body)


def report(rounds: list[Round], engines: list[Ours], with_llama: bool, prompt_tokens: int, args: Any) -> str:
    def med(key: str) -> float:
        return statistics.median(r.values[key] for r in rounds)

    def per_round(fn: Any) -> str:
        values = [fn(r.values) for r in rounds]
        return f"**{statistics.median(values):.2f}×** ({', '.join(f'{v:.2f}' for v in values)})"

    also = f" --also {args.also}" if args.also else ""
    lines = [f"Command: `.venv/bin/python bench/vs_llamacpp.py --threads {args.threads} --rounds {args.rounds} "
             f"--tokens {args.tokens}{also}{' --record' if args.record else ''}` "
             f"(SmolLM2-135M-Instruct Q4_1 GGUF; greedy; {args.tokens} tokens per conversation; "
             f"uncached prompt {prompt_tokens} tokens)", ""]
    lines += ["| measure | " + " | ".join(e.label for e in engines) + (" | llama.cpp |" if with_llama else " |"),
              "|---|" + "---|" * (len(engines) + (1 if with_llama else 0))]
    rows = [("decode, 1 conversation (tok/s)", "decode", "llama decode", "{:.1f}"),
            ("8 conversations, aggregate (tok/s)", "agg8", None, "{:.1f}"),
            ("2 conversations, aggregate (tok/s)", "agg2", None, "{:.1f}"),
            ("uncached TTFT (ms)", "ttft", "llama ttft", "{:.0f}"),
            ("p95 TTFT, 8 at once, persona prompt cached (ms)", "p95@8", None, "{:.0f}")]
    for title, key, llama_key, fmt in rows:
        scale = 1000 if "ms" in title else 1
        cells = [fmt.format(med(f"{e.label} {key}") * scale) for e in engines]
        if with_llama:
            cells.append(fmt.format(med(f"{engines[0].label} {llama_key}") * scale) if llama_key else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios per round (median, then each round):", ""]
    for e in engines:
        tag = e.label
        lines.append(f"- {tag}: batch 2 / batch 1 aggregate: "
                     + per_round(lambda v, t=tag: v[f"{t} agg2"] / v[f"{t} decode"]))
        if with_llama:
            lines.append(f"- {tag}: decode vs llama.cpp just before (target ≥ 0.5×): "
                         + per_round(lambda v, t=tag: v[f"{t} decode"] / v[f"{t} llama decode"]))
            lines.append(f"- {tag}: 8-conversation aggregate vs llama.cpp's one conversation just after "
                         "(target ≥ 1.5×): " + per_round(lambda v, t=tag: v[f"{t} agg8"] / v[f"{t} llama decode 2"]))
            lines.append(f"- {tag}: uncached TTFT vs llama.cpp's just before (target ≤ 1×): "
                         + per_round(lambda v, t=tag: v[f"{t} ttft"] / v[f"{t} llama ttft"]))
        lines.append(f"- {tag}: p95 TTFT at 8 (target ≤ 1 s): {med(f'{tag} p95@8'):.2f} s")
    if not with_llama:
        lines += ["", "llama.cpp: SKIPPED (llama-cpp-python not installed)."]
    return "\n".join(lines) + "\n\n" + machine_line() + "\n"


if __name__ == "__main__":
    main()
