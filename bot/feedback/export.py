"""Export rated replies as training data, streamed row by row.

Formats (TRL's conversational dataset types; messages are {"role", "content"} dicts):
- `jsonl`: one rated reply per line with its persona/version/variant, prompt, reply and ratings.
- `sft`:   {"messages": [...prompt, {"role": "assistant", "content": reply}]} for 👍 replies
           (language-modelling type, read by SFTTrainer).
- `kto`:   {"prompt": [...], "completion": [{"role": "assistant", ...}], "label": true|false}
           (unpaired preference type, read by KTOTrainer).
- `dpo`:   {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]} for
           prompts that got both a 👍 and a 👎 reply (preference type, read by DPOTrainer).

A reply's label is the sign of its net score (👍 minus 👎); ties are left out of sft/kto/dpo.
Replies of users who used /forget-me are gone from the feedback log, so they never appear here.
Memory stays flat: rows are written as `iter_rated()` pages through Redis; the DPO pairing
spills to a temporary SQLite file instead of holding every prompt in memory.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from bot.domain.feedback import RatedReply

if TYPE_CHECKING:  # bot.ports pulls in LangChain: keep `python -m bot --help` quick
    from bot.ports import FeedbackLog

ExportFormat = Literal["jsonl", "sft", "kto", "dpo"]
FORMATS: tuple[ExportFormat, ...] = ("jsonl", "sft", "kto", "dpo")

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class ExportOptions:
    persona_id: str | None = None
    min_ratings: int = 1
    #: Keep the system prompt in the prompt messages (drop it to train the persona into weights).
    include_system: bool = True
    #: DPO: at most this many (chosen, rejected) pairs per distinct prompt.
    max_pairs_per_prompt: int = 4


@dataclass
class ExportStats:
    rated: int = 0  # rated replies read
    written: int = 0  # rows written
    skipped: int = 0  # too few ratings, a tie, or (sft) not liked


def label_of(rated: RatedReply) -> bool | None:
    """True for a net 👍, False for a net 👎, None for a tie."""
    return None if rated.score == 0 else rated.score > 0


def prompt_of(rated: RatedReply, include_system: bool) -> list[Message]:
    messages = rated.record.prompt_messages
    return [dict(m) for m in messages if include_system or m.get("role") != "system"]


def completion_of(rated: RatedReply) -> list[Message]:
    return [{"role": "assistant", "content": rated.record.reply}]


def jsonl_row(rated: RatedReply) -> dict[str, Any]:
    r = rated.record
    return {
        "reply_id": r.reply_id,
        "persona_id": r.persona_id,
        "persona_version": r.persona_version,
        "variant": r.variant,
        "model": r.model,
        "adapter": r.adapter,
        "system_prompt_hash": r.system_prompt_hash,
        "lorebook_entries": r.lorebook_entries,
        "messages": r.prompt_messages,
        "reply": r.reply,
        "rating": rated.score,
        "ups": rated.ups,
        "downs": rated.downs,
        "ratings": rated.ratings,
        "latency_s": r.latency_s,
        "completion_tokens": r.completion_tokens,
        "created_at": r.created_at,
    }


def _dump(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


async def _eligible(
    log: FeedbackLog, options: ExportOptions, stats: ExportStats
) -> AsyncIterator[RatedReply]:
    async for rated in log.iter_rated(options.persona_id):
        stats.rated += 1
        if len(rated.ratings) < options.min_ratings:
            stats.skipped += 1
            continue
        yield rated


async def export(log: FeedbackLog, fmt: ExportFormat, out: TextIO, options: ExportOptions) -> ExportStats:
    """Write `fmt` rows to `out`; returns what was read, written and skipped."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if options.min_ratings < 1:
        raise ValueError("min_ratings must be at least 1")
    stats = ExportStats()
    if fmt == "dpo":
        await _export_dpo(log, out, options, stats)
        return stats
    async for rated in _eligible(log, options, stats):
        row = _single_row(fmt, rated, options)
        if row is None:
            stats.skipped += 1
            continue
        out.write(_dump(row))
        stats.written += 1
    return stats


def _single_row(fmt: ExportFormat, rated: RatedReply, options: ExportOptions) -> dict[str, Any] | None:
    if fmt == "jsonl":
        return jsonl_row(rated)
    label = label_of(rated)
    if label is None:
        return None
    prompt = prompt_of(rated, options.include_system)
    if fmt == "sft":
        return {"messages": [*prompt, *completion_of(rated)]} if label else None
    return {"prompt": prompt, "completion": completion_of(rated), "label": label}


# -- DPO: pair replies that answered the same prompt ---------------------------------------------


def prompt_key(prompt: list[Message]) -> str:
    canonical = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _export_dpo(log: FeedbackLog, out: TextIO, options: ExportOptions, stats: ExportStats) -> None:
    with tempfile.TemporaryDirectory(prefix="bot-dpo-") as tmp:
        db = sqlite3.connect(Path(tmp) / "pairs.sqlite")
        try:
            db.execute("CREATE TABLE r (key TEXT, label INTEGER, score INTEGER, prompt TEXT, reply TEXT)")
            async for rated in _eligible(log, options, stats):
                label = label_of(rated)
                if label is None:
                    stats.skipped += 1
                    continue
                prompt = prompt_of(rated, options.include_system)
                row = (prompt_key(prompt), int(label), rated.score, json.dumps(prompt), rated.record.reply)
                db.execute("INSERT INTO r VALUES (?, ?, ?, ?, ?)", row)
            db.execute("CREATE INDEX r_key ON r (key, label, score)")
            for pair in _pairs(db, options.max_pairs_per_prompt):
                out.write(_dump(pair))
                stats.written += 1
        finally:
            db.close()


def _pairs(db: sqlite3.Connection, max_pairs: int) -> Iterator[dict[str, Any]]:
    """For each prompt with both labels, pair the best-scored liked replies with the worst-scored
    disliked ones (spreading over both sides first), at most `max_pairs` pairs per prompt."""
    keys = db.execute(
        "SELECT key FROM r GROUP BY key HAVING MIN(label) = 0 AND MAX(label) = 1 ORDER BY MIN(rowid)"
    )
    for (key,) in keys:  # a cursor: the paired prompts are read lazily too
        chosen = db.execute(
            "SELECT prompt, reply FROM r WHERE key = ? AND label = 1 ORDER BY score DESC, rowid LIMIT ?",
            (key, max_pairs),
        ).fetchall()
        rejected = db.execute(
            "SELECT reply FROM r WHERE key = ? AND label = 0 ORDER BY score ASC, rowid LIMIT ?",
            (key, max_pairs),
        ).fetchall()
        prompt = json.loads(chosen[0][0])
        order = sorted(
            product(range(len(chosen)), range(len(rejected))), key=lambda ij: (ij[0] + ij[1], ij[0])
        )
        for i, j in order[:max_pairs]:
            yield {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen[i][1]}],
                "rejected": [{"role": "assistant", "content": rejected[j][0]}],
            }
