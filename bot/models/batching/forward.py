"""Model calls for the scheduler: prefill (with the prompt cache) for any `Forward`, and the
transformers one.

A `Forward` is what prefill needs of a model: embed tokens, and run embeddings on top of (optional)
cached keys/values, returning the last position's logits and every layer's keys/values. Two exist:
`TransformersForward` here (a transformers causal LM or a PeftModel holding several LoRA adapters)
and the native Llama forward (`bot.models.native`).

With a PeftModel every call names each row's adapter (`adapter_names`, "__base__" for none): PEFT would
otherwise apply its active adapter to every row. Soft prompts only matter at prefill: they enter as
embeddings before the row's tokens, and from then on live in the KV cache like any other position.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bot.models.batching.kv import BatchState, CacheKind, LayerKV, TransformersCaches, layers_of, pad_rows
from bot.models.batching.prefix_cache import PrefixCache, PrefixKey
from bot.models.batching.rows import Request

#: PEFT's adapter name for "no LoRA on this row" in a mixed batch.
BASE_ADAPTER = "__base__"


class Forward(Protocol):
    @property
    def caches(self) -> CacheKind:
        ...

    def embed(self, tokens: Sequence[int]) -> Any:
        """Token embeddings [len(tokens), hidden]."""
        ...

    def run(self, past: list[LayerKV] | None, loras: Sequence[str | None], embeds: Any, mask: Any | None,
            positions: Any) -> tuple[Any, list[LayerKV]]:
        """Run `embeds` [rows, T, hidden] after `past` (None: nothing before); `mask` [rows, past + T]
        (None: every position real), `positions` [rows, T]. Returns (logits of each row's last position
        [rows, vocab], every layer's keys/values over past + T)."""
        ...


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_of(model: Any) -> Any:
    return model.get_base_model() if is_peft(model) else model


def has_adapter(model: Any, lora: str | None) -> bool:
    """Whether a row naming `lora` (None: the base model) can run on `model` now."""
    return lora is None or (is_peft(model) and lora in model.peft_config)


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(model_class: type) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache` (the old name is deprecated).
    name = _CACHE_KWARG.get(model_class)
    if name is None:
        params = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
        name = _CACHE_KWARG[model_class] = "cache" if "cache" in params else "past_key_values"
    return name


def call(model: Any, cache: Any, loras: Sequence[str | None], **inputs: Any) -> Any:
    """One transformers forward pass; the logits of each row's last position, [rows, vocab]."""
    kwargs: dict[str, Any] = {_cache_kwarg(type(base_of(model))): cache, "use_cache": True, "logits_to_keep": 1}
    if is_peft(model):
        kwargs["adapter_names"] = [lora or BASE_ADAPTER for lora in loras]
    return model(**inputs, **kwargs).logits[:, -1, :]


class TransformersForward:
    """`Forward` over a transformers model; `resolve()` gives the module to call now (a PeftModel
    once an adapter bank has loaded a LoRA)."""

    def __init__(self, resolve: Callable[[], Any]) -> None:
        self.resolve = resolve
        self.caches = TransformersCaches(base_of(resolve()).config)

    def embed(self, tokens: Sequence[int]) -> Any:
        import torch

        embed = base_of(self.resolve()).get_input_embeddings()
        embed = getattr(embed, "base_layer", embed)
        return embed(torch.tensor(list(tokens), dtype=torch.long))

    def run(self, past: list[LayerKV] | None, loras: Sequence[str | None], embeds: Any, mask: Any | None,
            positions: Any) -> tuple[Any, list[LayerKV]]:
        cache = self.caches.empty() if past is None else self.caches.of(past)
        inputs: dict[str, Any] = {"inputs_embeds": embeds, "position_ids": positions}
        if mask is not None:
            inputs["attention_mask"] = mask
        logits = call(self.resolve(), cache, loras, **inputs)
        return logits, layers_of(cache)


def _prefix(fwd: Forward, request: Request, prefix_cache: PrefixCache | None) -> tuple[list[LayerKV] | None, int]:
    """The KV of a request's persona prefix (soft prompt + prefix tokens): from the prompt cache, or
    computed alone and stored. (None, 0) when the request has no cacheable prefix."""
    import torch

    split = request.prefix_len
    if split <= 0:
        return None, 0
    soft = request.soft_prompt
    key = PrefixKey.of(request.input_ids[:split], tag=request.cache_tag, lora=request.lora,
                       soft_prompt=None if soft is None else soft.name)
    entry = prefix_cache.get(key) if prefix_cache is not None else None
    if entry is not None:
        return entry.layers, split
    embeds = fwd.embed(request.input_ids[:split])
    if soft is not None:
        embeds = torch.cat([soft.embeddings.to(embeds.dtype), embeds])
    length = request.virtual_tokens + split
    _, layers = fwd.run(None, [request.lora], embeds.unsqueeze(0), None, torch.arange(length).unsqueeze(0))
    if prefix_cache is not None:
        prefix_cache.put(key, layers, length)
    return layers, 0


def _suffix_embeddings(fwd: Forward, request: Request) -> Any:
    """What is left to feed after the prefix: the soft prompt too when there is no prefix."""
    import torch

    tokens = fwd.embed(request.input_ids[request.prefix_len :])
    if request.prefix_len == 0 and request.soft_prompt is not None:
        return torch.cat([request.soft_prompt.embeddings.to(tokens.dtype), tokens])
    return tokens


def prefill(
    fwd: Forward, requests: Sequence[Request], prefix_cache: PrefixCache | None
) -> tuple[BatchState, Any, list[int]]:
    """Run new rows' prompts: (their batch state, last-position logits [rows, vocab], cached tokens per row).

    Each row's persona prefix comes from the prompt cache or is computed alone (ALWAYS as its own
    chunk, cache or not, so a hit gives bit for bit the state a miss computes). Then the rest of
    every row's prompt runs in ONE padded forward pass: the padded query positions are masked out,
    and a row's real positions keep their own position ids.
    """
    import torch

    prefixes = [_prefix(fwd, request, prefix_cache) for request in requests]
    starts = [r.prompt_positions - len(r.input_ids) + r.prefix_len if r.prefix_len else 0 for r in requests]
    width = max(starts)
    suffixes = [_suffix_embeddings(fwd, request) for request in requests]
    length = max(piece.shape[0] for piece in suffixes)
    past = None
    if width:
        sample = next(layers for layers, _ in prefixes if layers is not None)
        empty = [(k.new_zeros((1, k.shape[1], 0, k.shape[3])), v.new_zeros((1, v.shape[1], 0, v.shape[3])))
                 for k, v in sample]
        past = pad_rows([layers or empty for layers, _ in prefixes], width)
    mask = torch.zeros((len(requests), width + length), dtype=torch.long)
    positions = torch.zeros((len(requests), length), dtype=torch.long)
    embeds = suffixes[0].new_zeros((len(requests), length, suffixes[0].shape[1]))
    for i, (start, piece) in enumerate(zip(starts, suffixes, strict=True)):
        n = piece.shape[0]
        mask[i, width - start : width] = 1
        mask[i, width + length - n :] = 1
        positions[i, length - n :] = torch.arange(start, start + n)
        embeds[i, length - n :] = piece
    logits, layers = fwd.run(past, [r.lora for r in requests], embeds, mask, positions)
    state = BatchState(fwd.caches, fwd.caches.of(layers), mask, [r.prompt_positions for r in requests])
    return state, logits, [cached for _, cached in prefixes]
