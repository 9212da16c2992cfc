"""Cold start of the local backend: a fresh process until its first reply, from cached converted weights
vs converting the bundled GGUF first.

    .venv/bin/python bench/cold_start.py [--runs 3] [--record]

Each run is a NEW Python process that imports the bot's local backend, loads SmolLM2-135M
(`load_local_model`, the bot's own loader), builds its LocalRuntime (adapter bank + batch scheduler,
the serving path) and streams a reply (greedy, up to 32 tokens) to a one-line question. The GGUF run
starts from an empty data directory, so it dequantizes and converts the GGUF (and writes the
safetensors cache); the cached runs then start from
that cache, as every later start of the bot does. Times are measured by the parent from spawning the
process (interpreter start and imports included). Appends a section to BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Say hello in one short sentence."


def child(data_dir: Path) -> None:
    """In the fresh process: print seconds since start of each phase as JSON on the last line."""
    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import asyncio

    from bot.domain.persona import GenerationParams
    from bot.models.local import GenerationResult, LocalRuntime
    from bot.models.local_loader import load_local_model, quantize_for_serving
    from bot.settings import ModelSettings

    imported = time.perf_counter()
    settings = ModelSettings()  # as the bot serves: int8 weights by default (cached after the first start)
    loaded = quantize_for_serving(load_local_model(settings, data_dir), settings, data_dir)
    ready = time.perf_counter()
    runtime = LocalRuntime(loaded, settings)
    messages = [{"role": "user", "content": QUESTION}]
    marks: dict[str, float] = {}

    async def reply() -> None:
        params = GenerationParams(temperature=0.0, max_new_tokens=32, repetition_penalty=1.0)
        async for item in runtime.stream(messages, params):
            if "first_token" not in marks:
                marks["first_token"] = time.perf_counter()
            if isinstance(item, GenerationResult):
                marks["tokens"] = item.completion_tokens

    asyncio.run(reply())
    done = time.perf_counter()
    runtime.close()
    print(json.dumps({"imports": imported - started, "load": ready - imported, "from_cache": loaded.from_cache,
                      "first_token": marks["first_token"] - started, "reply": done - started,
                      "tokens": marks["tokens"], "child_total": done - started}))


def spawn(data_dir: Path) -> dict[str, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", str(data_dir)], check=True, capture_output=True,
                         text=True)
    wall = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    startup = wall - result["child_total"]  # interpreter start before the child's first line, and exit
    result["wall_first_token"] = result["first_token"] + startup
    result["wall_reply"] = result["reply"] + startup
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="cached-start runs (the median is reported)")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        gguf = spawn(Path(tmp))
        cached = [spawn(Path(tmp)) for _ in range(args.runs)]
    assert not gguf["from_cache"] and all(c["from_cache"] for c in cached)

    def median(key: str) -> float:
        return statistics.median(c[key] for c in cached)

    first, reply = median("wall_first_token"), median("wall_reply")
    verdict = "met" if first <= 3.0 else f"MISSED by {first - 3.0:.1f} s"
    table = "\n".join([
        "| start | imports | model load | first token (from spawn) | whole reply (from spawn) |",
        "|---|---|---|---|---|",
        f"| converting the GGUF | {gguf['imports']:.1f} s | {gguf['load']:.1f} s | {gguf['wall_first_token']:.1f} s "
        f"| {gguf['wall_reply']:.1f} s |",
        f"| cached safetensors (median of {args.runs}) | {median('imports'):.1f} s | {median('load'):.1f} s "
        f"| **{first:.1f} s** | {reply:.1f} s |",
    ])
    note = (f"Reply: greedy, {int(cached[0]['tokens'])} tokens to \"{QUESTION}\". Target: cold start ≤ 3 s "
            f"(judged on the first streamed token of the first reply, cached weights): {verdict}.")
    print(table + "\n\n" + note)
    if args.record:
        sys.path.insert(0, str(REPO))
        from bench.common import machine_line, record_section

        record_section("Cold start: new process to first reply",
                       f"{machine_line()}\n\nCommand: `.venv/bin/python bench/cold_start.py --runs {args.runs} "
                       f"--record` (SmolLM2-135M int8, the bot's loader, LocalRuntime)\n\n{table}\n\n{note}\n")


if __name__ == "__main__":
    main()
