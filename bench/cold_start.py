"""Cold start of the local backend: a fresh process until its first streamed token, cached artifacts,
the native engine vs the transformers engine in the same run (runs alternate).

    .venv/bin/python bench/cold_start.py [--runs 3] [--console] [--convert] [--record]

Two measures, each from spawning a NEW Python process (interpreter start and imports included):

* backend: the bot's loader (`load_for_serving`) and LocalRuntime (adapter bank + batch scheduler),
  then one greedy reply to a one-line question; phases: the bot's modules, `import torch`, loading the
  model (tokenizer, weights, kernels), and the first token;
* console (`--console`): `python -m bot chat` with the question piped in, default persona, embedded
  Redis; when its prompt appears and when the first character of the reply arrives.

Both start from cached artifacts (the converted GGUF, the tokenizer artifact, the weight caches and
compiled kernels under --data-dir; a missing cache is made by a first, unreported run). `--convert`
also times the one-time conversion from the GGUF into an empty directory. --record appends to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Say hello in one short sentence."
ENGINES = ("native", "transformers")


def child(data_dir: Path, engine: str) -> None:
    """In the fresh process: print each phase's end, in seconds since the first line, as JSON."""
    started = time.perf_counter()
    first_line = time.time()
    sys.path.insert(0, str(REPO))
    import asyncio

    from bot.domain.persona import GenerationParams
    from bot.models.local_loader import load_for_serving
    from bot.models.runtime import GenerationResult, LocalRuntime
    from bot.settings import ModelSettings

    modules = time.perf_counter()
    import torch  # noqa: F401  (timed on its own: the loader would import it first thing)

    torch_done = time.perf_counter()
    settings = ModelSettings(engine=engine)  # type: ignore[arg-type]
    loaded = load_for_serving(settings, data_dir, REPO / "adapters")
    runtime = LocalRuntime(loaded, settings)
    ready = time.perf_counter()
    marks: dict[str, float] = {}

    async def reply() -> None:
        params = GenerationParams(temperature=0.0, max_new_tokens=32, repetition_penalty=1.0)
        async for item in runtime.stream([{"role": "user", "content": QUESTION}], params):
            marks.setdefault("first_token", time.perf_counter())
            if isinstance(item, GenerationResult):
                marks["tokens"] = item.completion_tokens

    asyncio.run(reply())
    done = time.perf_counter()
    runtime.close()
    print(json.dumps({"modules": modules - started, "torch": torch_done - modules, "load": ready - torch_done,
                      "first_token": marks["first_token"] - started, "reply": done - started,
                      "tokens": marks["tokens"], "child_total": done - started, "engine": loaded.engine,
                      "weights": loaded.weights, "from_cache": loaded.from_cache, "first_line": first_line}))


def spawn_backend(data_dir: Path, engine: str) -> dict[str, float]:
    spawned = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", str(data_dir), "--engine", engine], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["start"] = result["first_line"] - spawned  # the interpreter, up to the child's first line
    result["wall_first_token"] = result["first_token"] + result["start"]
    return result


def spawn_console(data_dir: Path, engine: str) -> dict[str, float]:
    """`python -m bot chat` with one piped message: seconds to its prompt and to the reply's first character."""
    env = {**os.environ, "BOT_DATA_DIR": str(data_dir), "BOT_MODEL__ENGINE": engine, "BOT_LOG_LEVEL": "warning",
           "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "chat"], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{QUESTION}\n".encode())
    proc.stdin.close()
    seen, marks = b"", {}
    echo = f"{QUESTION}\n".encode()
    while byte := proc.stdout.read(1):
        seen += byte
        if "prompt" not in marks and b"/help for commands" in seen:
            marks["prompt"] = time.perf_counter() - started
        if echo in seen and "first" not in marks:
            reply = seen.split(echo, 1)[1]
            if b"> " in reply and reply.split(b"> ", 1)[1]:  # "Ada> " then the first character
                marks["first"] = time.perf_counter() - started
    proc.wait(timeout=120)
    if "first" not in marks:
        raise RuntimeError(f"no reply from the console ({engine}): {seen.decode(errors='replace')[-500:]}")
    return marks


def console_data_dir(tmp: Path, data_dir: Path) -> Path:
    """A fresh data directory (own Redis, journal: a new conversation) sharing the cached model artifacts."""
    target = Path(tempfile.mkdtemp(dir=tmp, prefix="console-"))
    for name in ("models", "kernels"):
        (target / name).symlink_to((data_dir / name).resolve())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per engine (the median is reported)")
    parser.add_argument("--console", action="store_true", help="also time `python -m bot chat`")
    parser.add_argument("--convert", action="store_true", help="also time converting the GGUF (~1 min)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="native", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.engine)
        return
    lines = []
    if args.convert:
        with tempfile.TemporaryDirectory() as tmp:
            first = spawn_backend(Path(tmp), "native")
        assert not first["from_cache"]
        lines.append(f"- first start, converting the GGUF (and writing every cache): first token after "
                     f"**{first['wall_first_token']:.1f} s**")
    for engine in ENGINES:  # makes any missing cache, so the measured runs all start from caches
        spawn_backend(args.data_dir, engine)
    backend: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    console: dict[str, list[dict[str, float]]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for engine in ENGINES:
                backend[engine].append(spawn_backend(args.data_dir, engine))
                if args.console:
                    console[engine].append(spawn_console(console_data_dir(Path(tmp), args.data_dir), engine))
    body = report(backend, console, args) + ("\n" + "\n".join(lines) + "\n" if lines else "")
    print(body)
    if args.record:
        sys.path.insert(0, str(REPO))
        from bench.common import machine_line, record_section

        record_section("Cold start: new process to first token", f"{body}\n{machine_line()}\n")


def report(backend: dict[str, list[dict[str, float]]], console: dict[str, list[dict[str, float]]],
           args: argparse.Namespace) -> str:
    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    command = (f".venv/bin/python bench/cold_start.py --runs {args.runs}{' --console' if args.console else ''}"
               f"{' --convert' if args.convert else ''}{' --record' if args.record else ''}")
    native = backend["native"][0]
    out = [f"Command: `{command}` (medians of {args.runs} runs per engine, alternating; cached artifacts; "
           f"native weights: {native['weights']}; a greedy reply to \"{QUESTION}\")", "",
           "| engine | interpreter | bot modules | import torch | load model | → first token | **first token, "
           "from spawn** |", "|---|---:|---:|---:|---:|---:|---:|"]
    for engine, runs in backend.items():
        load_end = med(runs, "modules") + med(runs, "torch") + med(runs, "load")
        out.append(f"| {engine} (backend) | {med(runs, 'start'):.2f} s | {med(runs, 'modules'):.2f} s | "
                   f"{med(runs, 'torch'):.2f} s | {med(runs, 'load'):.2f} s | "
                   f"{med(runs, 'first_token') - load_end:.2f} s | **{med(runs, 'wall_first_token'):.2f} s** |")
    ratio = [n["wall_first_token"] / t["wall_first_token"] for n, t in zip(backend["native"],
                                                                            backend["transformers"], strict=True)]
    out += ["", f"- backend, native / transformers, per run: **{statistics.median(ratio):.2f}×** "
            f"({', '.join(f'{r:.2f}' for r in ratio)}); target ≤ 3 s: "
            f"{'met' if med(backend['native'], 'wall_first_token') <= 3.0 else 'MISSED'}"]
    if console["native"]:
        for engine, runs in console.items():
            each = ", ".join(f"{run['first']:.2f}" for run in runs)
            out.append(f"- `python -m bot chat`, {engine}: prompt after {med(runs, 'prompt'):.2f} s, first reply "
                       f"character after **{med(runs, 'first'):.2f} s** ({each})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
