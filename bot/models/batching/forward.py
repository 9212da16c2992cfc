"""Model calls for the scheduler: single-row prefill (with the prompt cache) and batched decode.

The model may be a plain transformers causal LM or a PeftModel holding several LoRA adapters. With a
PeftModel every call names each row's adapter (`adapter_names`, "__base__" for none): PEFT would
otherwise apply its active adapter to every row. Soft prompts only matter at prefill: they enter as
embeddings before the row's tokens, and from then on live in the KV cache like any other position.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from bot.models.batching.kv import BatchState, LayerKV, cache_from, layers_of, new_cache, pad_rows
from bot.models.batching.prefix_cache import PrefixCache, PrefixKey
from bot.models.batching.rows import Request

#: PEFT's adapter name for "no LoRA on this row" in a mixed batch.
BASE_ADAPTER = "__base__"


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
    """One forward pass; the logits of each row's last position, [rows, vocab]."""
    kwargs: dict[str, Any] = {_cache_kwarg(type(base_of(model))): cache, "use_cache": True, "logits_to_keep": 1}
    if is_peft(model):
        kwargs["adapter_names"] = [lora or BASE_ADAPTER for lora in loras]
    return model(**inputs, **kwargs).logits[:, -1, :]


def _embed(model: Any, tokens: Sequence[int]) -> Any:
    import torch

    embed = base_of(model).get_input_embeddings()
    embed = getattr(embed, "base_layer", embed)
    return embed(torch.tensor(list(tokens), dtype=torch.long))


def _prefix(model: Any, request: Request, prefix_cache: PrefixCache | None) -> tuple[list[LayerKV] | None, int]:
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
    tokens = request.input_ids[:split]
    if soft is not None:
        inputs: dict[str, Any] = {"inputs_embeds": torch.cat([soft.embeddings, _embed(model, tokens)]).unsqueeze(0)}
    else:
        inputs = {"input_ids": torch.tensor([tokens], dtype=torch.long)}
    length = request.virtual_tokens + split
    cache = new_cache(base_of(model).config)
    call(model, cache, [request.lora], position_ids=torch.arange(length).unsqueeze(0), **inputs)
    layers = layers_of(cache)
    if prefix_cache is not None:
        prefix_cache.put(key, layers, length)
    return layers, 0


def _suffix_embeddings(model: Any, request: Request) -> Any:
    """What is left to feed after the prefix: the soft prompt too when there is no prefix."""
    import torch

    tokens = _embed(model, request.input_ids[request.prefix_len :])
    if request.prefix_len == 0 and request.soft_prompt is not None:
        return torch.cat([request.soft_prompt.embeddings.to(tokens.dtype), tokens])
    return tokens


def prefill(
    model: Any, requests: Sequence[Request], prefix_cache: PrefixCache | None
) -> tuple[BatchState, Any, list[int]]:
    """Run new rows' prompts: (their batch state, last-position logits [rows, vocab], cached tokens per row).

    Each row's persona prefix comes from the prompt cache or is computed alone (ALWAYS as its own
    chunk, cache or not, so a hit gives bit for bit the state a miss computes). Then the rest of
    every row's prompt runs in ONE padded forward pass: the padded query positions are masked out,
    and a row's real positions keep their own position ids.
    """
    import torch

    config = base_of(model).config
    prefixes = [_prefix(model, request, prefix_cache) for request in requests]
    starts = [r.prompt_positions - len(r.input_ids) + r.prefix_len if r.prefix_len else 0 for r in requests]
    width = max(starts)
    suffixes = [_suffix_embeddings(model, request) for request in requests]
    length = max(piece.shape[0] for piece in suffixes)
    cache = new_cache(config)
    if width:
        sample = next(layers for layers, _ in prefixes if layers is not None)
        empty = [(k.new_zeros((1, k.shape[1], 0, k.shape[3])), v.new_zeros((1, v.shape[1], 0, v.shape[3])))
                 for k, v in sample]
        cache = cache_from(config, pad_rows([layers or empty for layers, _ in prefixes], width))
    mask = torch.zeros((len(requests), width + length), dtype=torch.long)
    positions = torch.zeros((len(requests), length), dtype=torch.long)
    embeds = suffixes[0].new_zeros((len(requests), length, suffixes[0].shape[1]))
    for i, (start, piece) in enumerate(zip(starts, suffixes, strict=True)):
        n = piece.shape[0]
        mask[i, width - start : width] = 1
        mask[i, width + length - n :] = 1
        positions[i, length - n :] = torch.arange(start, start + n)
        embeds[i, length - n :] = piece
    logits = call(model, cache, [r.lora for r in requests], inputs_embeds=embeds, attention_mask=mask,
                  position_ids=positions)
    state = BatchState(config, cache, mask, [r.prompt_positions for r in requests])
    return state, logits, [cached for _, cached in prefixes]
