"""KV-cache surgery for continuous batching: merge rows of different lengths, drop rows, snapshot.

The running batch keeps ONE cache whose layers hold [rows, kv_heads, T, head_dim] tensors,
LEFT-padded to a common length T, plus a [rows, T] attention mask (1 = a real position).
Rows keep their own position ids (see `BatchState.positions`), so padding never shifts a row's
rotary positions and a row's tokens are the same batched or alone.

Two kinds of cache hold the same tensors (`CacheKind`): a transformers `DynamicCache` for the
transformers forward (`TransformersCaches`), and `KVCache`, plain torch, for the native forward
(`PlainCaches`: importing it costs no transformers). Either way the running batch's layers append in
place into buffers with spare room (`GrowingKV`).

Every operation here builds new tensors (cat, index, slice) and never writes into existing ones:
a prefix-cache snapshot can therefore share its tensors with any number of rows without copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

#: One layer's (keys, values), each [rows, kv_heads, T, head_dim].
LayerKV = tuple[Any, Any]

#: Free positions a batch cache keeps at its end, and the least it grows by when full.
SPARE_POSITIONS = 64


class GrowingKV:
    """One layer's keys and values in buffers with spare room: an update writes in place.

    transformers' DynamicLayer appends with torch.cat, copying the whole cache at every decode step:
    ~20% of a batch-8 step at 250 positions on a 2-core CPU. Here a step writes one position; the
    buffer grows (one copy) by half its size when full. `keys`/`values` are views of the buffers.
    """

    keys: Any
    values: Any

    def _setup(self, keys: Any, values: Any, spare: int) -> None:
        self._length = int(keys.shape[-2])
        self._k = _with_room(keys, self._length + spare)
        self._v = _with_room(values, self._length + spare)
        self._expose()

    def _expose(self) -> None:
        self.keys = self._k[..., : self._length, :]
        self.values = self._v[..., : self._length, :]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        end = self._length + int(key_states.shape[-2])
        if end > self._k.shape[-2]:
            capacity = end + max(SPARE_POSITIONS, self._k.shape[-2] // 2)
            self._k, self._v = _with_room(self.keys, capacity), _with_room(self.values, capacity)
        self._k[..., self._length : end, :] = key_states
        self._v[..., self._length : end, :] = value_states
        self._length = end
        self._expose()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length


class PlainLayer(GrowingKV):
    """GrowingKV for the native forward; it can also hand out the next free column to be written in
    place (`slot` / `commit`), with `keys`/`values` views made only when asked for."""

    def __init__(self, keys: Any, values: Any, spare: int) -> None:
        self._setup(keys, values, spare)

    def _expose(self) -> None:
        pass

    @property
    def keys(self) -> Any:
        return self._k[..., : self._length, :]

    @property
    def values(self) -> Any:
        return self._v[..., : self._length, :]

    def slot(self) -> tuple[Any, Any, int]:
        """(key buffer, value buffer, column) to write one new position into; `commit()` after writing."""
        if self._length + 1 > self._k.shape[-2]:
            capacity = self._length + 1 + max(SPARE_POSITIONS, self._k.shape[-2] // 2)
            self._k, self._v = _with_room(self.keys, capacity), _with_room(self.values, capacity)
        return self._k, self._v, self._length

    def commit(self) -> None:
        self._length += 1


def _with_room(tensor: Any, capacity: int) -> Any:
    """A copy of `tensor` [..., T, D] in a new buffer of `capacity` positions (the rest unset)."""
    buffer = tensor.new_empty((*tensor.shape[:-2], capacity, tensor.shape[-1]))
    buffer[..., : tensor.shape[-2], :] = tensor
    return buffer


class KVCache:
    """The native forward's cache: a list of layers, each with `keys`, `values` and `update()`."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers

    def get_seq_length(self) -> int:
        return int(self.layers[0].get_seq_length()) if self.layers else 0


class _FixedLayer:
    """A layer holding exactly the given tensors (a snapshot or a prefill result): never written to."""

    def __init__(self, keys: Any, values: Any) -> None:
        self.keys, self.values = keys, values

    def get_seq_length(self) -> int:
        return int(self.keys.shape[-2])


class CacheKind(Protocol):
    """Builds the cache object a model's forward expects around a list of per-layer tensors."""

    def of(self, layers: list[LayerKV], spare: int = 0) -> Any:
        """spare=0: exactly these tensors, no copy; spare>0: a copy in growing buffers (updates in place)."""
        ...


class PlainCaches:
    def of(self, layers: list[LayerKV], spare: int = 0) -> KVCache:
        if spare > 0:
            return KVCache([PlainLayer(keys, values, spare) for keys, values in layers])
        return KVCache([_FixedLayer(keys, values) for keys, values in layers])


def _growing_layer_class() -> type:
    """GrowingKV as a transformers DynamicLayer, for the transformers forward."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(GrowingKV, DynamicLayer):
        def __init__(self, keys: Any, values: Any, spare: int) -> None:
            DynamicLayer.__init__(self)
            self.device = keys.device
            self.is_initialized = True
            self._setup(keys, values, spare)

    return GrowingLayer


_GROWING: list[type] = []


class TransformersCaches:
    """DynamicCache objects for a transformers model with this config."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def empty(self) -> Any:
        return new_cache(self.config)

    def of(self, layers: list[LayerKV], spare: int = 0) -> Any:
        return cache_from(self.config, layers, spare)


def new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def layers_of(cache: Any) -> list[LayerKV]:
    """The (keys, values) of every layer (references, not copies)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_from(config: Any, layers: list[LayerKV], spare: int = 0) -> Any:
    """A DynamicCache holding these tensors. spare=0: exactly these tensors, no copy (the next update
    concatenates); spare>0: a copy in growing buffers, for the running batch (updates write in place)."""
    cache = new_cache(config)
    if len(cache.layers) != len(layers):
        raise ValueError(f"cache has {len(cache.layers)} layers, got {len(layers)}")
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        raise ValueError("sliding-window caches are not supported by the batch scheduler")
    if spare > 0:
        if not _GROWING:
            _GROWING.append(_growing_layer_class())
        cache.layers = [_GROWING[0](keys, values, spare) for keys, values in layers]
        return cache
    for layer, (keys, values) in zip(cache.layers, layers, strict=True):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def seq_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def _pad_left(tensor: Any, n: int) -> Any:
    import torch

    if n == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:-2], n, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


def _pad_mask(mask: Any, n: int) -> Any:
    import torch

    return mask if n == 0 else torch.cat([mask.new_zeros((mask.shape[0], n)), mask], dim=1)


def pad_rows(rows: list[list[LayerKV]], width: int) -> list[LayerKV]:
    """Stack single-row layer lists into one batch, left-padding each row to `width` positions."""
    import torch

    return [
        (torch.cat([_pad_left(row[i][0], width - row[i][0].shape[-2]) for row in rows]),
         torch.cat([_pad_left(row[i][1], width - row[i][1].shape[-2]) for row in rows]))
        for i in range(len(rows[0]))
    ]


@dataclass
class BatchState:
    """The running batch: its cache (built by `caches`), attention mask and each row's next position id."""

    caches: CacheKind
    cache: Any = None
    mask: Any = None  # LongTensor [rows, T]
    positions: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.positions)

    def add_row(self, row_cache: Any, next_position: int) -> None:
        """Append one prefilled row (a single-row cache without padding)."""
        import torch

        other = BatchState(self.caches, row_cache, torch.ones((1, seq_length(row_cache)), dtype=torch.long),
                           [next_position])
        self.extend(other)

    def extend(self, other: BatchState) -> None:
        """Append every row of `other` after this batch's rows, left-padding whichever is shorter."""
        import torch

        if other.size == 0:
            return
        if self.size == 0:
            self.cache = self.caches.of(layers_of(other.cache), SPARE_POSITIONS)
            self.mask, self.positions = other.mask, list(other.positions)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        grow, other_pad = width - self.mask.shape[1], width - other.mask.shape[1]
        merged = [
            (torch.cat([_pad_left(bk, grow), _pad_left(ok, other_pad)]),
             torch.cat([_pad_left(bv, grow), _pad_left(ov, other_pad)]))
            for (bk, bv), (ok, ov) in zip(layers_of(self.cache), layers_of(other.cache), strict=True)
        ]
        self.mask = torch.cat([_pad_mask(self.mask, grow), _pad_mask(other.mask, other_pad)])
        self.cache = self.caches.of(merged, SPARE_POSITIONS)
        self.positions = self.positions + list(other.positions)

    def keep_rows(self, keep: list[int]) -> None:
        """Keep only these row indices (in this order), then drop columns that are padding in every row."""
        import torch

        if len(keep) == self.size:
            return
        if not keep:
            self.cache, self.mask, self.positions = None, None, []
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        # Columns before the first real position of any kept row only cost attention time.
        start = int(mask.any(dim=0).nonzero()[0, 0])
        layers = [
            (k.index_select(0, index)[..., start:, :], v.index_select(0, index)[..., start:, :])
            for k, v in layers_of(self.cache)
        ]
        self.cache = self.caches.of(layers, SPARE_POSITIONS)
        self.mask = mask[:, start:]
        self.positions = [self.positions[i] for i in keep]

    def step_inputs(self) -> tuple[Any, Any]:
        """(attention_mask including the incoming token, position_ids) for one decode step."""
        import torch

        mask = torch.cat([self.mask, torch.ones((self.size, 1), dtype=torch.long)], dim=1)
        positions = torch.tensor(self.positions, dtype=torch.long).unsqueeze(1)
        return mask, positions

    def advance(self, mask_after_step: Any) -> None:
        """Record one decode step: every row gained one real position."""
        self.mask = mask_after_step
        self.positions = [p + 1 for p in self.positions]

    def nbytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(k.nbytes + v.nbytes for k, v in layers_of(self.cache))


def snapshot_nbytes(layers: list[LayerKV]) -> int:
    return sum(k.nbytes + v.nbytes for k, v in layers)
