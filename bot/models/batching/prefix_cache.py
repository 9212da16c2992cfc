"""The prompt (prefix) cache: a persona's hard prompt is run through the model once per
(persona, adapter, exact prompt tokens); every later turn that starts with the same tokens copies
nothing and recomputes nothing up to there, so time to first token depends on the new tokens only.

Keys are content addresses: (tag, LoRA name, soft prompt name, length, hash of the prefix tokens).
A reloaded persona whose prompt changed simply stops matching its old entries; `invalidate(tag)`
(tag = persona id) or `clear()` frees them at once. Entries are evicted least-recently-used beyond
`max_entries` or `max_bytes`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.models.batching.kv import LayerKV, snapshot_nbytes


@dataclass(frozen=True, slots=True)
class PrefixKey:
    tag: str
    lora: str | None
    soft_prompt: str | None
    length: int
    digest: str

    @classmethod
    def of(cls, tokens: Sequence[int], *, tag: str = "", lora: str | None = None,
           soft_prompt: str | None = None) -> PrefixKey:
        digest = hashlib.blake2b(",".join(map(str, tokens)).encode(), digest_size=16).hexdigest()
        return cls(tag, lora, soft_prompt, len(tokens), digest)


@dataclass(frozen=True)
class PrefixEntry:
    layers: list[LayerKV]  # [1, kv_heads, positions, head_dim] per layer; never written to
    positions: int  # soft prompt + prefix tokens
    nbytes: int


class PrefixCache:
    """LRU map PrefixKey -> KV snapshot. Thread-safe (the worker reads, the event loop invalidates)."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 512 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[PrefixKey, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, key: PrefixKey) -> PrefixEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: PrefixKey, layers: list[LayerKV], positions: int) -> None:
        entry = PrefixEntry(layers, positions, snapshot_nbytes(layers))
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            total = sum(e.nbytes for e in self._entries.values())
            while len(self._entries) > self.max_entries or total > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                total -= evicted.nbytes

    def invalidate(self, tag: str) -> int:
        """Drop every entry stored under `tag` (a persona id); returns how many."""
        with self._lock:
            stale = [k for k in self._entries if k.tag == tag]
            for key in stale:
                del self._entries[key]
            return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def chat_prefix_length(tokenizer: Any, messages: Sequence[dict[str, str]], prefix_messages: int,
                       full: Sequence[int]) -> int:
    """How many leading tokens of `full` (the whole chat prompt) are the first `prefix_messages`
    messages -- the persona's hard prompt. 0 when the chat template does not render that prefix as
    a token prefix of the whole prompt (then nothing is cached, which is always correct)."""
    if prefix_messages <= 0 or prefix_messages >= len(messages):
        return 0
    encoded = tokenizer.apply_chat_template(list(messages[:prefix_messages]), add_generation_prompt=False,
                                            return_dict=True)
    prefix = list(encoded["input_ids"])
    if len(prefix) >= len(full) or list(full[: len(prefix)]) != prefix:
        return 0
    return len(prefix)
