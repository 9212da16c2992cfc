"""What the scheduler asks of a model: prefill new rows, run one decode step, know its adapters.

    runner = runner_for(model, resolve_model, fast_decode=True)
    state, logits, cached = runner.prefill(requests, prefix_cache)
    logits = runner.decode(state.cache, loras, tokens, mask, positions)

Two implementations: `TransformersRunner` (a transformers model, or the PeftModel an AdapterBank wraps
around it; decode steps through `FastDecoder` where the model allows) and the native Llama runner
(`bot.models.native`), chosen by `runner_for`: a model object that knows how to serve itself offers
`batch_runner()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bot.models.batching import forward
from bot.models.batching.decode import FastPath
from bot.models.batching.kv import BatchState, CacheKind
from bot.models.batching.prefix_cache import PrefixCache
from bot.models.batching.rows import Request


class ModelRunner(Protocol):
    @property
    def caches(self) -> CacheKind:
        ...

    @property
    def max_positions(self) -> int:
        """Longest prompt + reply the model takes."""
        ...

    def eos_ids(self, tokenizer: Any) -> frozenset[int]:
        ...

    def has_adapter(self, lora: str | None) -> bool:
        """Whether a row naming `lora` (None: the base model) can run now."""
        ...

    def prefill(self, requests: Sequence[Request], prefix_cache: PrefixCache | None
                ) -> tuple[BatchState, Any, list[int]]:
        ...

    def decode(self, cache: Any, loras: Sequence[str | None], tokens: Sequence[int], mask: Any,
               positions: Any) -> Any:
        """Logits [rows, vocab] for one new token per row; appends each layer's new keys/values to `cache`."""
        ...


class TransformersRunner:
    def __init__(self, model: Any, resolve_model: Callable[[], Any] | None = None, *, fast_decode: bool = True
                 ) -> None:
        self.resolve = resolve_model or (lambda: model)
        self._forward = forward.TransformersForward(self.resolve)
        self.caches = self._forward.caches
        self._fast = FastPath.for_model(model) if fast_decode else None
        base = forward.base_of(model)
        self._base = base
        self.max_positions = int(getattr(base.config, "max_position_embeddings", 2048) or 2048)

    def eos_ids(self, tokenizer: Any) -> frozenset[int]:
        return eos_ids(self._base, tokenizer)

    def has_adapter(self, lora: str | None) -> bool:
        return forward.has_adapter(self.resolve(), lora)

    def prefill(self, requests: Sequence[Request], prefix_cache: PrefixCache | None
                ) -> tuple[BatchState, Any, list[int]]:
        return forward.prefill(self._forward, requests, prefix_cache)

    def decode(self, cache: Any, loras: Sequence[str | None], tokens: Sequence[int], mask: Any,
               positions: Any) -> Any:
        model = self.resolve()
        if self._fast is not None and self._fast.usable(model):
            return self._fast.decoder(cache, loras, tokens, mask, positions)
        import torch

        return forward.call(model, cache, loras, input_ids=torch.tensor(list(tokens)).unsqueeze(1),
                            attention_mask=mask, position_ids=positions)


def runner_for(model: Any, resolve_model: Callable[[], Any] | None = None, *, fast_decode: bool = True
               ) -> ModelRunner:
    make = getattr(model, "batch_runner", None)
    if callable(make):
        runner: ModelRunner = make()
        return runner
    return TransformersRunner(model, resolve_model, fast_decode=fast_decode)


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The end-of-turn tokens: the generation config's, plus the tokenizer's end-of-sequence token."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
