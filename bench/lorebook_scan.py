"""Lorebook scanning: 10,000 entries checked against each new message (issue #13: well under 5 ms).

    .venv/bin/python bench/lorebook_scan.py [--entries 10000] [--messages 300] [--record]

A synthetic book built from a seeded generator: every entry has 1-3 keys (some multi-word, a third
with secondary keys and a selective logic), a few are constant, a few regex keys. Each message is a
new ~60-word text of common words with a couple of key words mixed in, scanned with the previous
message (scan depth 2, as SillyTavern's default), as the bot does for every turn:

  indexed   bot.domain.lore_scan.activate(): precompiled anchors (bot.domain.lore_index)
  naive     the obvious loop: every key of every entry checked with `in` against the window

Both find the same entries (checked on every message). Reports median and p95 per message for
substring and whole-word matching, the one-off cost of validating and indexing the book, and the
ratio naive / indexed measured in the same run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, percentile, record_section  # noqa: E402
from bot.domain.lore_index import contains_whole  # noqa: E402
from bot.domain.lore_scan import LoreSource, activate  # noqa: E402
from bot.domain.lorebook import Lorebook  # noqa: E402

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had "
    "by word but not what all were we when your can said there use an each which she do how their if "
    "will up other about out many then them these so some her would make like him into time has look two "
    "more write go see number no way could people my than first water been call who oil its now find "
    "long down day did get come made may part ship sword castle river king queen north south road night "
)
COMMON = tuple(_WORDS.split())


def pseudo_word(rng: random.Random) -> str:
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4)))


def build_book(entries: int, rng: random.Random, *, whole: bool) -> tuple[Lorebook, list[str]]:
    vocabulary = sorted({pseudo_word(rng) for _ in range(entries * 3)})
    data: list[dict[str, Any]] = []
    for i in range(entries):
        keys = rng.sample(vocabulary, rng.randint(1, 3))
        if rng.random() < 0.15:
            keys[0] = f"{keys[0]} {rng.choice(vocabulary)}"
        entry: dict[str, Any] = {"id": i, "keys": keys, "content": f"Lore entry {i} about {keys[0]}."}
        if rng.random() < 0.33:
            entry["secondary_keys"] = rng.sample([*COMMON, *vocabulary[:50]], 2)
            entry["logic"] = rng.choice(["and_any", "not_any", "not_all", "and_all"])
        if i % 1000 == 0:
            entry["constant"] = True
        if i % 2500 == 1:
            entry["keys"] = [f"/{keys[0]}s?/i"]
        data.append(entry)
    book = Lorebook.model_validate({"entries": data, "match_whole_words": whole, "scan_depth": 2})
    return book, vocabulary


def messages(count: int, vocabulary: list[str], rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        words = [rng.choice(COMMON) for _ in range(60)]
        for _ in range(2):
            words[rng.randrange(len(words))] = rng.choice(vocabulary).capitalize()
        out.append(" ".join(words) + ".")
    return out


def naive(book: Lorebook, window: list[str]) -> set[int]:
    """Every key of every entry against the joined window; the same semantics as the index (no regex)."""
    text = "\n".join(window)
    folded = text.casefold()
    found = set()
    for i, entry in enumerate(book.entries):
        if entry.constant:
            found.add(i)
            continue

        def has(key: str) -> bool:
            key = key.casefold()
            return contains_whole(folded, key) if book.match_whole_words else key in folded

        if any(has(k) for k in entry.keys if not k.startswith("/")):
            secondary = [has(k) for k in entry.secondary_keys]
            ok = {"and_any": any, "and_all": all, "not_any": lambda h: not any(h),
                  "not_all": lambda h: not all(h)}[entry.logic](secondary) if secondary else True
            if ok:
                found.add(i)
    return found


def run(entries: int, count: int, *, whole: bool, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    started = time.perf_counter()
    book, vocabulary = build_book(entries, rng, whole=whole)
    validate_s = time.perf_counter() - started
    started = time.perf_counter()
    _ = book.index
    index_s = time.perf_counter() - started
    texts = messages(count + 1, vocabulary, rng)
    sources = [LoreSource("bench", book)]
    windows = [texts[n - 1 : n + 1] for n in range(1, count + 1)]
    fast: list[float] = []
    got: list[set[int]] = []
    for window in windows:  # the bot's path: each message is new once, then the previous one (memoized)
        t0 = time.perf_counter()
        fired = activate(sources, window, render=str, cost=lambda s: len(s) // 4, budget=10**9, book_budget=10**9)
        fast.append(time.perf_counter() - t0)
        got.append({int(f.ref.split("#")[1]) for f in fired})
    slow: list[float] = []
    regex_ids = {i for i, e in enumerate(book.entries) if e.keys and e.keys[0].startswith("/")}
    for n, window in enumerate(windows):
        t0 = time.perf_counter()
        expected = naive(book, window)
        slow.append(time.perf_counter() - t0)
        if got[n] - regex_ids != expected - regex_ids:
            raise SystemExit(f"indexed and naive scans disagree on message {n}")
    fired_total = sum(len(g) for g in got)
    return {
        "validate_s": validate_s, "index_s": index_s,
        "median_ms": statistics.median(fast) * 1000, "p95_ms": percentile(fast, 95) * 1000,
        "naive_median_ms": statistics.median(slow) * 1000, "fired": fired_total / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--record", action="store_true", help="append the results to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for whole in (False, True):
        r = run(args.entries, args.messages, whole=whole, seed=args.seed)
        mode = "whole words" if whole else "substring"
        rows.append(
            f"| {mode} | {r['median_ms']:.3f} ms | {r['p95_ms']:.3f} ms | {r['naive_median_ms']:.1f} ms | "
            f"{r['naive_median_ms'] / r['median_ms']:.0f}x | {r['fired']:.1f} | {r['validate_s']:.2f} s | "
            f"{r['index_s'] * 1000:.0f} ms |"
        )
    body = (
        f"{machine_line()}\n"
        f"`.venv/bin/python bench/lorebook_scan.py --entries {args.entries} --messages {args.messages}`: "
        f"{args.entries} entries, a new ~60-word message scanned with the previous one per turn.\n\n"
        "| matching | indexed median | indexed p95 | naive median | naive / indexed | entries fired | "
        "load (validate) | index build |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if args.record:
        record_section("Lorebook scan: 10,000 entries per message (target: well under 5 ms)", body)


if __name__ == "__main__":
    main()
