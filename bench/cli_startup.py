"""How long `python -m bot ...` takes to start, in new processes: this checkout, and optionally an
older revision alternated with it in the same run (a ratio both sides share the machine's noise for).

    .venv/bin/python bench/cli_startup.py [--rounds 5] [--compare REV] [--record]

Commands timed: `--help`, `personas check` (the shipped personas and adapters), `config`, and
`redis status` (nothing started). `--compare REV` checks REV out into a temporary git worktree.
Medians of `--rounds` runs; also which heavy libraries each command imported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402

COMMANDS = (["--help"], ["personas", "check"], ["config"], ["redis", "status"])
HEAVY = ("torch", "transformers", "langchain_core", "discord", "redis", "pydantic_settings")


def run_once(checkout: Path, args: list[str], data_dir: Path) -> tuple[float, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(BOT_DATA_DIR=str(data_dir), COLUMNS="200")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "bot", *args], cwd=checkout, env=env,
                            capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time")}
    return seconds, [m for m in HEAVY if m in imported]


@contextlib.contextmanager
def checkout_of(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        path = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)


def measure(checkouts: dict[str, Path], rounds: int, data_dir: Path) -> dict[tuple[str, str], tuple[float, list[str]]]:
    times: dict[tuple[str, str], list[float]] = {}
    heavy: dict[tuple[str, str], list[str]] = {}
    for _ in range(rounds):
        for args in COMMANDS:
            for name, path in checkouts.items():  # alternated: both sides see the same load
                seconds, imported = run_once(path, args, data_dir)
                times.setdefault((name, " ".join(args)), []).append(seconds)
                heavy[(name, " ".join(args))] = imported
    return {key: (statistics.median(values), heavy[key]) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="An older revision to time alternately with this one.")
    parser.add_argument("--record", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as data:
        checkouts = {"this": REPO}
        if args.compare:
            checkouts[args.compare] = stack.enter_context(checkout_of(args.compare))
        results = measure(checkouts, args.rounds, Path(data))
    names = list(checkouts)
    header = ["command", *(f"{n} (s)" for n in names)]
    if len(names) == 2:
        header.append("this / old")
    header.append("heavy libraries imported (this)")
    rows = []
    for command in (" ".join(c) for c in COMMANDS):
        cells = [f"`python -m bot {command}`", *(f"{results[(n, command)][0]:.2f}" for n in names)]
        if len(names) == 2:
            cells.append(f"**{results[(names[0], command)][0] / results[(names[1], command)][0]:.2f}×**")
        cells.append(", ".join(results[(names[0], command)][1]) or "none")
        rows.append(cells)
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *("| " + " | ".join(r) + " |" for r in rows)])
    command = "`.venv/bin/python bench/cli_startup.py " + " ".join(sys.argv[1:]).replace(" --record", "") + "`"
    body = (f"{machine_line()}\nCommand: {command.replace(' `', '`')}. Medians of {args.rounds} new processes"
            f"{', the two revisions alternated' if args.compare else ''}.\n\n{table}\n")
    print(body)
    if args.record:
        record_section("CLI start-up: new process to exit", body)


if __name__ == "__main__":
    main()
