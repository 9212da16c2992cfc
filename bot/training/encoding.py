"""Tokenize chats for training: the loss falls on the trained assistant tokens only.

Assistant spans are found on the rendered chat TEXT (the chat template rendered for growing
prefixes of the conversation) and mapped to tokens through the tokenizer's offsets, which holds
for any template that renders a conversation as a prefix of its continuation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.training.data import ChatExample
from bot.training.errors import TrainingError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def assistant_spans(tokenizer: Any, example: ChatExample) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of its trained assistant replies (end marker included)."""
    messages = [m.to_dict() for m in example.messages]
    full = _render(tokenizer, messages, False)
    targets = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= example.context]
    spans = []
    for i in targets:
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(through) and through.startswith(before)):
            raise TrainingError("the chat template does not render a conversation as a prefix of its continuation")
        # rstrip: the newline after the end-of-turn marker is never generated, so never trained.
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def encode(tokenizer: Any, example: ChatExample, max_length: int) -> Encoded | None:
    """Token ids and labels (IGNORE outside the spans); None if nothing trainable fits max_length."""
    text, spans = assistant_spans(tokenizer, example)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    # Keep the end, where the (last) trained reply is; a long rated prompt loses its oldest turns.
    result = Encoded(ids[-max_length:], labels[-max_length:])
    return result if result.trained_tokens else None


def batches(
    examples: Sequence[Encoded], batch_size: int, pad_id: int, shuffle_seed: int | None = None
) -> list[dict[str, Any]]:
    """Right-padded tensor batches (input_ids, attention_mask, labels), optionally shuffled."""
    import torch

    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            mask[row, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out
