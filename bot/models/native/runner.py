"""The batch scheduler's view of a NativeLlama (a `ModelRunner`, and a `Forward` for prefill)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.models.batching import forward
from bot.models.batching.kv import BatchState, PlainCaches
from bot.models.batching.prefix_cache import PrefixCache
from bot.models.batching.rows import Request
from bot.models.batching.runner import eos_ids

if TYPE_CHECKING:
    from bot.models.batching.kv import LayerKV
    from bot.models.native.model import NativeLlama


class NativeRunner:
    def __init__(self, model: NativeLlama) -> None:
        self.model = model
        self.caches = PlainCaches()
        self.max_positions = model.shape.max_positions

    def eos_ids(self, tokenizer: Any) -> frozenset[int]:
        return eos_ids(self.model, tokenizer)

    def has_adapter(self, lora: str | None) -> bool:
        return lora is None or lora in self.model.loras

    # Forward (for forward.prefill)
    def embed(self, tokens: Sequence[int]) -> Any:
        return self.model.embed_tokens(tokens)

    def run(self, past: list[LayerKV] | None, loras: Sequence[str | None], embeds: Any, mask: Any | None,
            positions: Any) -> tuple[Any, list[LayerKV]]:
        return self.model.forward(past, loras, embeds, mask, positions)

    def prefill(self, requests: Sequence[Request], prefix_cache: PrefixCache | None
                ) -> tuple[BatchState, Any, list[int]]:
        return forward.prefill(self, requests, prefix_cache)

    def decode(self, cache: Any, loras: Sequence[str | None], tokens: Sequence[int], mask: Any,
               positions: Any) -> Any:
        return self.model.decode(cache, loras, tokens, mask, positions)
