"""1,000 LoRA personas on one base model: resident memory, start-up validation, load cost on first use.

    .venv/bin/python bench/many_adapters.py [--personas 1000] [--requests 120] [--engine auto] [--record]

Builds --personas adapter directories (hard links to the shipped captain-lora files: each is a
separate adapter to the bank, at no disk cost), validates them all as the bot does at start-up
(`check_adapter`: load while the bank has room, read-and-check beyond), then answers --requests
messages (4 tokens each, 8 at a time) from personas drawn at random, so adapters are loaded on first
use and the least recently used are unloaded beyond BOT_MODEL__MAX_LOADED_LORA. RSS is compared with
the same process serving the same number of messages from the base model alone (measured first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402
from bot.domain.persona import GenerationParams  # noqa: E402
from bot.models.local import GenerationResult, LocalRuntime  # noqa: E402
from bot.models.local_loader import load_for_serving  # noqa: E402
from bot.settings import ModelSettings  # noqa: E402

PARAMS = GenerationParams(temperature=0.0, max_new_tokens=4, repetition_penalty=1.0)
QUESTIONS = ["How do I manage my time?", "What is a coral reef?", "Why is the sea salty?", "Tell me a joke."]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_adapters(root: Path, count: int) -> list[Path]:
    source = REPO / "adapters" / "captain-lora"
    paths = []
    for i in range(count):
        target = root / f"persona-{i:04d}"
        target.mkdir()
        for file in source.iterdir():
            os.link(file, target / file.name)
        paths.append(target)
    return paths


async def serve(runtime: LocalRuntime, adapters: list[Path | None], requests: int, seed: int) -> list[float]:
    """Answer `requests` messages, 8 at a time, each from a random persona; returns first-text latencies."""
    rng = random.Random(seed)
    latencies: list[float] = []

    async def one(i: int) -> None:
        adapter = rng.choice(adapters)
        messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": QUESTIONS[i % 4]}]
        started = time.perf_counter()
        first = None
        async for item in runtime.stream(messages, PARAMS, adapter):
            if first is None and not isinstance(item, GenerationResult):
                first = time.perf_counter() - started
        latencies.append(first if first is not None else time.perf_counter() - started)

    for start in range(0, requests, 8):
        await asyncio.gather(*(one(i) for i in range(start, min(requests, start + 8))))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--personas", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--engine", default="auto", choices=["auto", "native", "transformers"])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    settings = ModelSettings(engine=args.engine)
    loaded = load_for_serving(settings, args.data_dir)
    runtime = LocalRuntime(loaded, settings)
    asyncio.run(serve(runtime, [None], args.requests, 0))
    base_rss = rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(Path(tmp), args.personas)
        started = time.perf_counter()
        for i, path in enumerate(paths):
            runtime.check_adapter(f"persona-{i}", path)
        check_s = time.perf_counter() - started
        after_check = rss_mib()
        stats = runtime.adapters.stats
        loads_at_start, load_s_at_start = stats.loads, stats.load_seconds
        latencies = asyncio.run(serve(runtime, list(paths), args.requests, 1))
        served_rss = rss_mib()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        loads = stats.loads - loads_at_start
        load_ms = (stats.load_seconds - load_s_at_start) / max(1, loads) * 1000
    runtime.close()
    lines = [
        f"Command: `.venv/bin/python bench/many_adapters.py --personas {args.personas} --requests {args.requests}"
        f" --engine {args.engine}{' --record' if args.record else ''}` ({loaded.engine} engine, {loaded.weights} "
        "base; LoRA r=8 on q/k/v/o_proj, 1.8 MiB each; "
        f"BOT_MODEL__MAX_LOADED_LORA={settings.max_loaded_lora}; {args.requests} messages, 8 at a time, "
        "4 tokens each, from random personas)", "",
        "| measure | value |", "|---|---|",
        f"| RSS, base model after serving {args.requests} messages | {base_rss:.0f} MiB |",
        f"| RSS after validating {args.personas} LoRA personas at start-up | {after_check:.0f} MiB "
        f"(**{after_check / base_rss:.2f}×**) |",
        f"| RSS after serving {args.requests} messages from random personas | {served_rss:.0f} MiB "
        f"(**{served_rss / base_rss:.2f}×**, target ≤ 1.5×) |",
        f"| peak RSS | {peak:.0f} MiB |",
        f"| start-up validation of {args.personas} adapters | {check_s:.1f} s "
        f"({loads_at_start} loaded while there was room, {load_s_at_start:.1f} s of that) |",
        f"| loads on first use while serving | {loads} ({load_ms:.0f} ms each on average) |",
        f"| evictions (LRU) | {stats.evictions} |",
        f"| adapters loaded at the end | {runtime.adapters.loaded_lora()} |",
        f"| time to first text, p50 / max | {statistics.median(latencies) * 1000:.0f} / "
        f"{max(latencies) * 1000:.0f} ms |",
        "", machine_line()]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record_section(f"{args.personas} LoRA personas on one base model", body)


if __name__ == "__main__":
    main()
