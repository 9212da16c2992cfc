"""Training examples: JSONL chat files, a persona's few-shot examples, its well-rated replies.

Every example is a chat (`messages`) whose assistant turns are the training targets. Examples
without a system message get the persona's system prompt, rendered as at serving time, so an
adapter learns in the context it will be served in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from bot.domain.messages import ChatMessage, Role
from bot.domain.persona import Persona
from bot.domain.prompt import PromptContext, render
from bot.ports import FeedbackLog
from bot.training.errors import TrainingError

log = logging.getLogger(__name__)

_ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})
#: Fixed template variables for training prompts: the same data always gives the same tokens.
TRAINING_CONTEXT = PromptContext(user_name="friend", now=datetime(2025, 1, 1, 12, 0))


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[ChatMessage, ...]
    source: str
    #: The first `context` messages are context only, never trained: a rated reply's prompt (its
    #: history and few-shot turns are not what users rated), or few-shot examples when measuring.
    context: int = 0

    def key(self) -> str:
        return json.dumps([m.to_dict() for m in self.messages], ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class DataSource:
    name: str
    sha256: str
    examples: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "sha256": self.sha256, "examples": self.examples}


def _message(raw: object, where: str) -> ChatMessage:
    if not isinstance(raw, dict) or raw.get("role") not in _ROLES or not isinstance(raw.get("content"), str):
        raise TrainingError(f"{where}: each message needs a role (system/user/assistant) and text content")
    if not raw["content"].strip():
        raise TrainingError(f"{where}: empty {raw['role']} message")
    role: Role = raw["role"]
    return ChatMessage(role, raw["content"])


def parse_chat(raw: object, where: str, source: str) -> ChatExample:
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list) or not messages:
        raise TrainingError(f'{where}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    parsed = tuple(_message(m, where) for m in messages)
    if any(m.role == "system" for m in parsed[1:]):
        raise TrainingError(f"{where}: a system message may only come first")
    if parsed[-1].role != "assistant":
        raise TrainingError(f"{where}: the last message must be the assistant's (the training target)")
    return ChatExample(parsed, source)


#: Longest JSONL line read (bytes); a longer example is skipped with a warning, never held whole.
MAX_LINE_BYTES = 1024 * 1024


def load_jsonl(path: Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[ChatExample], DataSource]:
    """Examples of one JSONL file (one chat a line; blank lines and `//` comments skipped).

    Streamed: memory holds one line of at most `max_line_bytes` at a time (longer lines are skipped
    with a warning naming the line); the file's hash is computed on the way."""
    digest = hashlib.sha256()
    examples: list[ChatExample] = []
    try:
        with path.open("rb") as file:
            for number, raw in _lines(file, digest, max_line_bytes, path):
                example = _example(raw, f"{path}:{number}", str(path))
                if example is not None:
                    examples.append(example)
    except OSError as exc:
        raise TrainingError(f"cannot read training data {path}: {exc.strerror or exc}") from exc
    if not examples:
        raise TrainingError(f"{path}: no examples")
    return examples, DataSource(str(path), digest.hexdigest(), len(examples))


def _lines(file: BinaryIO, digest: Any, limit: int, path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each line no longer than `limit`; longer lines are read through in
    chunks (hashed, never kept) and skipped with a warning."""
    number = 0
    while True:
        line = file.readline(limit + 1)
        if not line:
            return
        number += 1
        digest.update(line)
        if len(line) > limit and not line.endswith(b"\n"):
            size = len(line)
            while chunk := file.readline(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n"):
                    break
            log.warning("%s:%d: example of %s bytes skipped (longer than %s bytes)", path, number, f"{size:,}",
                        f"{limit:,}")
            continue
        yield number, line


def _example(raw: bytes, where: str, source: str) -> ChatExample | None:
    line = raw.decode("utf-8", errors="replace")
    if not line.strip() or line.lstrip().startswith("//"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    except RecursionError:
        raise TrainingError(f"{where}: invalid JSON: nested too deeply") from None
    return parse_chat(data, where, source)


def persona_examples(persona: Persona) -> tuple[list[ChatExample], DataSource]:
    name = f"persona:{persona.id}:examples"
    examples = [
        ChatExample((ChatMessage("user", ex.user), ChatMessage("assistant", ex.assistant)), name)
        for ex in persona.examples
    ]
    return examples, source_of(name, examples)


async def feedback_examples(log: FeedbackLog, persona_id: str) -> tuple[list[ChatExample], DataSource]:
    """The persona's replies rated up by more users than down, each in the prompt it answered."""
    name = f"feedback:{persona_id}"
    examples: list[ChatExample] = []
    async for rated in log.iter_rated(persona_id):
        if rated.ups <= rated.downs or not rated.record.reply.strip():
            continue
        prompt = [_message(m, f"reply {rated.record.reply_id}") for m in rated.record.prompt_messages]
        messages = (*prompt, ChatMessage("assistant", rated.record.reply))
        examples.append(ChatExample(messages, name, context=len(prompt)))
    return examples, source_of(name, examples)


def source_of(name: str, examples: Sequence[ChatExample]) -> DataSource:
    digest = hashlib.sha256("\n".join(e.key() for e in examples).encode()).hexdigest()
    return DataSource(name, digest, len(examples))


def training_system_prompt(persona: Persona) -> str:
    return render(persona.system_prompt, persona, TRAINING_CONTEXT)


def with_system(examples: Iterable[ChatExample], system_prompt: str) -> list[ChatExample]:
    """Give every example without a system message this one."""
    system = ChatMessage("system", system_prompt)
    return [e if e.messages[0].role == "system" else with_context(e, [system]) for e in examples]


def with_context(example: ChatExample, context: Sequence[ChatMessage]) -> ChatExample:
    """The example after untrained context messages (a system prompt, few-shot turns)."""
    return replace(example, messages=(*context, *example.messages), context=example.context + len(context))


def split_holdout(
    examples: Sequence[ChatExample], fraction: float, seed: int = 0
) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, held_out): a deterministic split by content hash, independent of file order.

    At least one example is held out when there are two or more (an unmeasured adapter is a guess).
    """
    if not 0.0 <= fraction < 1.0:
        raise TrainingError("the held-out fraction must be in [0, 1)")

    def rank(e: ChatExample) -> str:
        return hashlib.sha256(f"{seed}:{e.key()}".encode()).hexdigest()

    ordered = sorted(examples, key=rank)
    count = round(len(ordered) * fraction)
    if fraction > 0 and len(ordered) >= 2:
        count = max(1, count)
    held = {id(e) for e in ordered[:count]}
    return [e for e in examples if id(e) not in held], [e for e in examples if id(e) in held]
