"""The refinement dataset: a persona's rated replies as conversations to replay, plus its test suite.

Each rated reply of the persona's *current* version becomes a `ReplayItem`: the remembered turns
and the user's message it answered (recovered from the exact prompt the record holds), the reply,
how many users rated it up and down (the weight is the number of raters; a reply with both 👍 and
👎 keeps both: conflicting ratings stay conflicting) and what the user said next, when a later
reply of the same conversation shows it. Items are split into train and validation *by
conversation* (a deterministic hash, so the same data always splits the same way and no
conversation leaks across the split).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bot.domain.feedback import RatedReply, ReplyRecord
from bot.domain.messages import ChatMessage, Role
from bot.domain.persona import Persona
from bot.domain.prompt import example_messages
from bot.domain.variants import DEFAULT_VARIANT, unit_hash
from bot.evals.cases import EvalCase
from bot.ports import FeedbackLog

Split = Literal["train", "validation"]


@dataclass(frozen=True)
class ReplayItem:
    reply_id: str
    conversation_id: str
    variant: str
    created_at: float
    history: tuple[ChatMessage, ...]
    user_text: str
    reply: str
    ups: int
    downs: int
    next_user: str | None = None
    split: Split = "train"

    @property
    def weight(self) -> int:
        """How many users rated this reply."""
        return self.ups + self.downs

    @property
    def liked(self) -> bool:
        return self.ups > self.downs

    @property
    def disliked(self) -> bool:
        return self.downs > self.ups

    def conversation(self) -> list[ChatMessage]:
        """What the model read before replying (without system prompt and examples)."""
        return [*self.history, ChatMessage("user", self.user_text)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = [m.to_dict() for m in self.history]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayItem:
        history = tuple(ChatMessage(m["role"], m["content"]) for m in data["history"])
        return cls(**{**data, "history": history})


@dataclass
class Dataset:
    persona_id: str
    version: str
    items: list[ReplayItem]
    cases: tuple[EvalCase, ...] = ()
    validation_fraction: float = 0.3
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def train(self) -> list[ReplayItem]:
        return [i for i in self.items if i.split == "train"]

    @property
    def validation(self) -> list[ReplayItem]:
        return [i for i in self.items if i.split == "validation"]

    @property
    def fingerprint(self) -> str:
        """Short hash of what the dataset holds (which replies, ratings and cases)."""
        parts = [f"{i.reply_id}:{i.ups}:{i.downs}:{i.split}" for i in self.items]
        parts += [c.model_dump_json() for c in self.cases]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]

    def summary(self) -> dict[str, Any]:
        def counts(items: Sequence[ReplayItem]) -> dict[str, int]:
            return {
                "replies": len(items),
                "conversations": len({i.conversation_id for i in items}),
                "ups": sum(i.ups for i in items),
                "downs": sum(i.downs for i in items),
                "conflicting": sum(1 for i in items if i.ups and i.downs),
                "with_next_message": sum(1 for i in items if i.next_user),
            }

        return {
            "persona": self.persona_id,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "train": counts(self.train),
            "validation": counts(self.validation),
            "test_cases": len(self.cases),
        }

    def to_json(self) -> str:
        data = {
            "persona_id": self.persona_id,
            "version": self.version,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "notes": self.notes,
            "summary": self.summary(),
            "items": [i.to_dict() for i in self.items],
            "cases": [c.model_dump(mode="json") for c in self.cases],
        }
        return json.dumps(data, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Dataset:
        data = json.loads(text)
        return cls(
            persona_id=data["persona_id"],
            version=data["version"],
            items=[ReplayItem.from_dict(i) for i in data["items"]],
            cases=tuple(EvalCase.model_validate(c) for c in data["cases"]),
            validation_fraction=data["validation_fraction"],
            seed=data["seed"],
            notes=list(data.get("notes", [])),
        )


# -- recovering the conversation from a record's prompt -------------------------------------------


def _messages(record: ReplyRecord) -> list[ChatMessage]:
    roles: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}
    return [ChatMessage(roles[m["role"]], m.get("content", "")) for m in record.prompt_messages
            if m.get("role") in roles]


def _turns(record: ReplyRecord) -> list[ChatMessage]:
    messages = _messages(record)
    return messages[1:] if messages and messages[0].role == "system" else messages


def shared_examples(records: Sequence[ReplyRecord]) -> int:
    """How many leading messages every prompt of these records shares, in whole user/assistant
    pairs, when they come from at least two conversations: the few-shot examples of a variant
    that is gone from the persona file (a rolled-back canary). 0 when it cannot be told."""
    if len({r.conversation_id for r in records}) < 2:
        return 0
    prompts = [_turns(r) for r in records]
    shortest = min(len(p) for p in prompts) - 1  # the last message is always the user's own
    shared = 0
    while shared + 2 <= shortest and all(p[shared : shared + 2] == prompts[0][shared : shared + 2] for p in prompts):
        shared += 2
    return shared


def split_prompt(record: ReplyRecord, persona: Persona, unknown_examples: int = 0
                 ) -> tuple[tuple[ChatMessage, ...], str] | None:
    """(remembered turns, the user's message) of a recorded prompt: the system prompt and the
    few-shot examples are stripped — those of the record's variant when the persona still defines
    it, else `unknown_examples` leading messages (see shared_examples)."""
    messages = _turns(record)
    if not messages or messages[-1].role != "user":
        return None
    known = [persona]
    if record.variant in {v.id for v in persona.variants}:
        known.insert(0, persona.with_variant(record.variant))
    for source in known:
        shots = example_messages(source)
        if shots and messages[: len(shots)] == shots:
            messages = messages[len(shots) :]
            break
    else:
        if record.variant not in {v.id for v in persona.variants} and 0 < unknown_examples < len(messages):
            messages = messages[unknown_examples:]
    return tuple(messages[:-1]), messages[-1].content


def split_of(conversation_ids: Sequence[str], fraction: float, seed: int) -> dict[str, Split]:
    """Deterministic conversation split: the `fraction` of conversations with the smallest hash go
    to validation (at least one when there are two or more, never all)."""
    ordered = sorted(set(conversation_ids), key=lambda c: unit_hash(str(seed), "split", c))
    count = round(len(ordered) * fraction)
    if fraction > 0 and len(ordered) >= 2:
        count = min(max(1, count), len(ordered) - 1)
    held = set(ordered[:count])
    return {c: ("validation" if c in held else "train") for c in ordered}


async def _next_messages(
    log: FeedbackLog, rated: list[RatedReply], scan_limit: int
) -> dict[str, str]:
    """reply id -> the user's next message in its conversation (from later records, rated or not)."""
    if not rated:
        return {}
    by_conversation: dict[str, list[ReplyRecord]] = defaultdict(list)
    seen: set[str] = set()
    for r in rated:
        by_conversation[r.record.conversation_id].append(r.record)
        seen.add(r.record.reply_id)
    since = min(r.record.created_at for r in rated)
    if scan_limit > 0:
        async for record in log.recent(since, scan_limit):
            if record.reply_id not in seen and record.conversation_id in by_conversation:
                by_conversation[record.conversation_id].append(record)
                seen.add(record.reply_id)
    out: dict[str, str] = {}
    for records in by_conversation.values():
        records.sort(key=lambda r: r.created_at)
        for before, after in itertools.pairwise(records):
            last = after.prompt_messages[-1] if after.prompt_messages else None
            if last is not None and last.get("role") == "user":
                out[before.reply_id] = last.get("content", "")
    return out


async def build_dataset(
    log: FeedbackLog,
    persona: Persona,
    *,
    cases: Sequence[EvalCase] = (),
    validation_fraction: float = 0.3,
    seed: int = 0,
    scan_limit: int = 20_000,
) -> Dataset:
    """The replay set of `persona`'s current version (every variant of it) and its test cases."""
    rated = [r async for r in log.iter_rated(persona.id) if r.record.persona_version == persona.version]
    notes: list[str] = []
    next_user = await _next_messages(log, rated, scan_limit)
    splits = split_of([r.record.conversation_id for r in rated], validation_fraction, seed)
    by_variant: dict[str, list[ReplyRecord]] = defaultdict(list)
    for r in rated:
        by_variant[r.record.variant].append(r.record)
    # Variants gone from the file (a rolled-back canary with its own examples); "default" and refine's
    # "control" serve the persona's own examples, so their shared openings are real conversation.
    unknown = {v: shared_examples(records) for v, records in by_variant.items()
               if v not in {x.id for x in persona.variants} | {DEFAULT_VARIANT, "control"}}
    items: list[ReplayItem] = []
    skipped = 0
    for r in rated:
        parts = split_prompt(r.record, persona, unknown.get(r.record.variant, 0))
        if parts is None or not r.record.reply.strip():
            skipped += 1
            continue
        history, user_text = parts
        items.append(
            ReplayItem(
                reply_id=r.record.reply_id,
                conversation_id=r.record.conversation_id,
                variant=r.record.variant,
                created_at=r.record.created_at,
                history=history,
                user_text=user_text,
                reply=r.record.reply,
                ups=r.ups,
                downs=r.downs,
                next_user=next_user.get(r.record.reply_id),
                split=splits[r.record.conversation_id],
            )
        )
    if skipped:
        notes.append(f"{skipped} rated replies skipped (empty reply or a prompt without a user message)")
    return Dataset(persona.id, persona.version, items, tuple(cases), validation_fraction, seed, notes)
