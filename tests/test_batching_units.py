"""Batching building blocks without the model: KV merging, sampling, the prompt cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bot.domain.persona import GenerationParams
from bot.models.batching.kv import BatchState, TransformersCaches, cache_from, layers_of
from bot.models.batching.prefix_cache import PrefixCache, PrefixKey
from bot.models.batching.sampling import TOP_K, next_token, penalize


class _Config:
    """Just enough of a model config for DynamicCache(config=...)."""

    def __init__(self, layers: int) -> None:
        from transformers import LlamaConfig

        self.config = LlamaConfig(num_hidden_layers=layers, hidden_size=8, num_attention_heads=2,
                                  num_key_value_heads=1, intermediate_size=8, vocab_size=32)


CONFIG = _Config(2).config


def row_cache(length: int, seed: int) -> tuple[object, list[tuple[torch.Tensor, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    layers = [(torch.randn(1, 1, length, 4, generator=gen), torch.randn(1, 1, length, 4, generator=gen))
              for _ in range(2)]
    return cache_from(CONFIG, layers), layers


def real_part(state: BatchState, row: int, layer: int) -> torch.Tensor:
    keys = layers_of(state.cache)[layer][0][row]
    return keys[:, state.mask[row].bool(), :]


def test_rows_of_different_lengths_merge_left_padded_and_keep_their_positions() -> None:
    state = BatchState(TransformersCaches(CONFIG))
    originals = []
    for length, seed in [(5, 1), (9, 2), (3, 3)]:
        cache, layers = row_cache(length, seed)
        originals.append(layers)
        state.add_row(cache, next_position=length + 10)
    assert state.size == 3 and state.mask.shape == (3, 9)
    assert state.mask.sum(dim=1).tolist() == [5, 9, 3]
    assert state.mask[0].tolist() == [0] * 4 + [1] * 5  # left padding
    for row, layers in enumerate(originals):
        for layer in range(2):
            assert torch.equal(real_part(state, row, layer), layers[layer][0][0])
    mask, positions = state.step_inputs()
    assert mask.shape == (3, 10) and positions.flatten().tolist() == [15, 19, 13]
    state.advance(mask)
    assert state.positions == [16, 20, 14]


def test_dropping_rows_trims_columns_that_only_padded_them() -> None:
    state = BatchState(TransformersCaches(CONFIG))
    originals = []
    for length, seed in [(5, 1), (9, 2), (3, 3)]:
        cache, layers = row_cache(length, seed)
        originals.append(layers)
        state.add_row(cache, next_position=length)
    state.keep_rows([2, 0])  # the long row leaves; order may change
    assert state.positions == [3, 5] and state.mask.shape == (2, 5)
    assert torch.equal(real_part(state, 0, 1), originals[2][1][0][0])
    assert torch.equal(real_part(state, 1, 0), originals[0][0][0][0])
    state.keep_rows([])
    assert state.size == 0 and state.cache is None


def test_merging_never_writes_into_a_shared_snapshot() -> None:
    cache, layers = row_cache(4, 7)
    before = [k.clone() for k, _ in layers]
    state = BatchState(TransformersCaches(CONFIG))
    state.add_row(cache, 4)
    state.add_row(cache_from(CONFIG, layers), 4)
    state.keep_rows([1])
    assert all(torch.equal(k, b) for (k, _), b in zip(layers, before, strict=True))


def test_repetition_penalty_matches_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    generated = [3, 7, 7, 12]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([generated]), logits.unsqueeze(0).clone())[0]
    assert torch.allclose(penalize(logits, generated, 1.3), expected)
    assert torch.equal(penalize(logits, generated, 1.0), logits)


def test_greedy_takes_the_penalized_argmax() -> None:
    logits = torch.zeros(10)
    logits[4], logits[6] = 2.0, 1.9
    greedy = GenerationParams(temperature=0.0, repetition_penalty=1.2)
    assert next_token(logits, [], greedy) == 4
    assert next_token(logits, [4], greedy) == 6


def test_sampling_stays_inside_transformers_top_k_top_p_set() -> None:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(200, generator=torch.Generator().manual_seed(1)) * 3
    params = GenerationParams(temperature=0.8, top_p=0.7, repetition_penalty=1.0)
    scores = logits.unsqueeze(0).clone()
    for warper in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(TOP_K), TopPLogitsWarper(0.7)):
        scores = warper(None, scores)
    allowed = set(torch.isfinite(scores[0]).nonzero().flatten().tolist())
    gen = torch.Generator().manual_seed(2)
    seen = {next_token(logits, [], params, gen) for _ in range(300)}
    assert seen <= allowed and len(seen) > 1


def test_prefix_cache_is_lru_by_entries_and_bytes() -> None:
    layer = [(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4))]  # 320 bytes
    cache = PrefixCache(max_entries=2, max_bytes=10_000)
    keys = [PrefixKey.of([i, i + 1], tag="p") for i in range(3)]
    cache.put(keys[0], layer, 10)
    cache.put(keys[1], layer, 10)
    assert cache.get(keys[0]) is not None  # now most recent
    cache.put(keys[2], layer, 10)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and len(cache) == 2
    small = PrefixCache(max_entries=10, max_bytes=700)
    for key in keys:
        small.put(key, layer, 10)
    assert len(small) == 2 and small.nbytes == 640
    assert (small.hits, cache.hits, cache.misses) == (0, 2, 1)


def test_prefix_keys_separate_adapters_and_tags_can_be_invalidated() -> None:
    tokens = [1, 2, 3]
    assert PrefixKey.of(tokens) == PrefixKey.of(list(tokens))
    assert PrefixKey.of(tokens, lora="a") != PrefixKey.of(tokens, lora="b")
    assert PrefixKey.of(tokens, soft_prompt="s") != PrefixKey.of(tokens)
    assert PrefixKey.of(tokens) != PrefixKey.of([*tokens, 4])
    layer = [(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))]
    cache = PrefixCache()
    cache.put(PrefixKey.of(tokens, tag="captain"), layer, 3)
    cache.put(PrefixKey.of(tokens, tag="other"), layer, 3)
    assert cache.invalidate("captain") == 1 and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [{"max_batch": 0}, {"max_queue": -1}])
def test_scheduler_rejects_nonsense_limits(bad: dict[str, Any]) -> None:
    from bot.models.batching import BatchScheduler

    with pytest.raises(ValueError):
        BatchScheduler(object(), object(), **bad)


def test_a_running_batch_cache_appends_in_place_and_grows_when_full() -> None:
    from bot.models.batching.kv import SPARE_POSITIONS

    _, layers = row_cache(3, 11)
    cache = cache_from(CONFIG, layers, spare=2)
    expected = [k for k, _ in layers]
    for step in range(SPARE_POSITIONS + 5):  # past the spare room: the buffer grows
        new_keys = torch.full((1, 1, 1, 4), float(step))
        for i, layer in enumerate(cache.layers):
            keys, _ = layer.update(new_keys, new_keys.clone())
            expected[i] = torch.cat([expected[i], new_keys], dim=-2)
            assert torch.equal(keys, expected[i])
    assert cache.get_seq_length() == 3 + SPARE_POSITIONS + 5
    assert torch.equal(layers[0][0], row_cache(3, 11)[1][0][0])  # the source tensors were copied, not reused
