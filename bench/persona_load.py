"""Persona loading: the shipped personas, hostile files, and `personas check`, timed.

    .venv/bin/python bench/persona_load.py [--rounds 50] [--record]

Reports medians of `--rounds` runs: loading the shipped personas (target: well under 100 ms), each
hostile file kind against a plain persona file of the same run (the ratio shows the work stays
bounded), and one `personas check` process end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402
from bot.errors import PersonaFileProblems  # noqa: E402
from bot.personas.documents import Limits, parse_document  # noqa: E402
from bot.personas.loader import load_directory  # noqa: E402

PLAIN = (REPO / "personas" / "captain.yaml").read_text()
BIG = Limits(max_bytes=50_000_000)
HOSTILE = {
    "YAML bomb (9 levels of 9 aliases)": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
    "100k keys (5 MB)": "\n".join(f"k{i}: {i}" for i in range(100_000)),
    "50k examples (5 MB)": "examples:\n" + "".join(f"  - {{user: q{i}, assistant: a{i}}}\n" for i in range(50_000)),
    "500 levels of nesting": "model: " + "[" * 500 + "]" * 500,
    "version of 5,000 digits": "version: " + "9" * 5000,
}


def median_ms(action: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def parse_or_fail(text: str) -> None:
    with contextlib.suppress(PersonaFileProblems):
        parse_document(Path("x.yaml"), text, BIG)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    shipped = median_ms(lambda: load_directory(REPO / "personas", adapters_root=REPO / "adapters"), args.rounds)
    plain = median_ms(lambda: parse_or_fail(PLAIN), args.rounds)
    rows = [f"| shipped personas, `load_directory` ({len(list((REPO / 'personas').glob('*.yaml')))} files) "
            f"| {shipped:.1f} ms | |", f"| one persona file (captain.yaml) | {plain:.2f} ms | 1× |"]
    for name, text in HOSTILE.items():
        took = median_ms(lambda t=text: parse_or_fail(t), max(3, args.rounds // 10))
        rows.append(f"| {name}: refused | {took:.2f} ms | {took / plain:.1f}× |")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bot", "personas", "check"], cwd=REPO, capture_output=True, check=True)
    check_s = time.perf_counter() - started
    rows.append(f"| `python -m bot personas check` (new process, adapters' widths included) | {check_s:.2f} s | |")
    body = "\n".join([
        machine_line(),
        f"Command: `.venv/bin/python bench/persona_load.py --rounds {args.rounds}`. Medians; hostile files are "
        "parsed with the byte limit lifted (50 MB) to show that the other limits stop the work early.",
        "",
        "| what | time | vs one persona file |",
        "|---|---|---|",
        *rows,
        "",
    ])
    print(body)
    if args.record:
        record_section("Persona loading: shipped files, hostile files, personas check", body)


if __name__ == "__main__":
    main()
