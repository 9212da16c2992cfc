"""A Llama-family decoder in plain torch: the native forward (no transformers, no PEFT).

    model = NativeLlama(shape, embed, layers, norm, head)
    logits, layers = model.forward(past, loras, embeds, mask, positions)       # prefill, any length
    logits = model.decode(cache, loras, tokens, mask, positions)                # one token per row

It computes what transformers' LlamaForCausalLM computes -- embeddings, per layer RMSNorm, q/k/v
projections, rotary embeddings at each row's own positions, grouped-query attention with the padding
mask, output projection, RMSNorm, SiLU-gated MLP; final norm; tied or untied head -- with the same
operations where it matters for the numbers (rotary angles as position × inverse frequency in float32,
q·cos + rotate_half(q)·sin), so greedy tokens equal the reference's (tests/test_native.py).

LoRA adapters live in `model.loras` (name -> `LoraWeights`, managed by `NativeAdapterBank`), applied per
row as PEFT's mixed-batch forward does: for the rows naming an adapter, `B(A(x)) * scaling` is added
to the projection's output. Soft prompts are input embeddings and need nothing here.

A decode step is one function per layer over buffers preallocated per batch size: ~15 tensor
operations and 4 kernel calls a layer, no module calls and no per-step allocation of activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from bot.models.batching.kv import LayerKV, PlainCaches
from bot.models.native.config import LlamaShape
from bot.models.native.linear import Linear

#: Where each projection's outputs sit in a (fused) matrix's output: (transformers name, start, end).
_Slices = tuple[tuple[str, int, int], ...]


def _slices(shape: LlamaShape) -> dict[str, _Slices]:
    q, kv, i, h = shape.q_size, shape.kv_size, shape.intermediate_size, shape.hidden_size
    return {"qkv": (("self_attn.q_proj", 0, q), ("self_attn.k_proj", q, q + kv),
                    ("self_attn.v_proj", q + kv, q + 2 * kv)),
            "o": (("self_attn.o_proj", 0, h),),
            "gate_up": (("mlp.gate_proj", 0, i), ("mlp.up_proj", i, 2 * i)),
            "down": (("mlp.down_proj", 0, h),)}


@dataclass
class Layer:
    attn_norm: Any
    qkv: Linear  # q, k, v stacked
    o: Linear
    mlp_norm: Any
    gate_up: Linear  # gate, up stacked
    down: Linear


@dataclass
class LoraWeights:
    """One LoRA adapter: per layer, projection name -> (A [r, in], B [out, r]); one scaling."""

    name: str
    scaling: float
    layers: list[dict[str, tuple[Any, Any]]]
    nbytes: int = 0


#: Rows that use one adapter: (its weights, row indices, or None for every row).
LoraGroups = list[tuple[LoraWeights, Any]]


class _Rope:
    """cos/sin tables of the default rotary embedding, as transformers computes them (float32:
    angle = position × inverse frequency, one rounding), extended on demand."""

    def __init__(self, head_dim: int, theta: float) -> None:
        import torch

        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.cos = self.sin = self.sin_signed = torch.empty(0, head_dim)

    def _grow(self, positions: int) -> None:
        import torch

        size = max(positions, 2 * self.cos.shape[0], 256)
        angles = torch.arange(size, dtype=torch.int64).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        half = self.sin.shape[1] // 2
        # rotate_half(x) * sin == roll(x, half) * sin_signed (the sign moves onto sin, exactly)
        self.sin_signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), dim=-1)

    def at(self, positions: Any) -> tuple[Any, Any, Any]:
        """(cos, sin, sin_signed) at these positions (any shape) -> [..., head_dim]."""
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > self.cos.shape[0]:
            self._grow(top)
        return self.cos[positions], self.sin[positions], self.sin_signed[positions]


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class _Step:
    """A decode step's activation buffers for its number of rows."""

    hidden: Any
    qkv: Any
    o: Any
    gate_up: Any
    act: Any
    down: Any
    logits: Any
    x: Any  # a layer's normalized input
    attn: Any
    tokens: Any


class _Buffers:
    """Activation buffers allocated for the largest batch seen so far; a step of `rows` rows uses the
    first `rows` rows of each (a row-major slice: contiguous, no copy)."""

    def __init__(self, shape: LlamaShape, capacity: int) -> None:
        import torch

        self.capacity = capacity
        widths = {"hidden": shape.hidden_size, "qkv": shape.q_size + 2 * shape.kv_size, "o": shape.hidden_size,
                  "gate_up": 2 * shape.intermediate_size, "act": shape.intermediate_size,
                  "down": shape.hidden_size, "logits": shape.vocab_size, "x": shape.hidden_size,
                  "attn": shape.q_size}
        self._full = {name: torch.empty((capacity, width), dtype=torch.float32) for name, width in widths.items()}
        self._tokens = torch.empty(capacity, dtype=torch.long)
        self._views: dict[int, _Step] = {}

    def rows(self, rows: int) -> _Step:
        view = self._views.get(rows)
        if view is None:
            view = self._views[rows] = _Step(**{name: full[:rows] for name, full in self._full.items()},
                                             tokens=self._tokens[:rows])
        return view


@dataclass
class NativeLlama:
    shape: LlamaShape
    embed: Any  # [vocab, hidden] float32
    layers: list[Layer]
    norm: Any
    head: Linear
    #: "float32", "int8" or "gguf" (the GGUF's own blocks): what the projections and head hold
    weights: str = "float32"
    eos_token_id: list[int] = field(default_factory=list)
    name_or_path: str = ""
    loras: dict[str, LoraWeights] = field(default_factory=dict)
    #: the C decode operations (bot.models.native.ops); None: the same step in torch operations
    ops: Any = None

    def __post_init__(self) -> None:
        self._rope = _Rope(self.shape.head_dim, self.shape.rope_theta)
        self._buffers: _Buffers | None = None
        self.scale = self.shape.head_dim**-0.5
        self._slices = _slices(self.shape)
        self._descs: Any = None
        s = self.shape
        # what the rest of the bot reads of a transformers model (BaseModelInfo, eos tokens)
        self.config = SimpleNamespace(architectures=[s.architecture], model_type=s.model_type,
                                      hidden_size=s.hidden_size, num_hidden_layers=s.num_layers,
                                      vocab_size=s.vocab_size, max_position_embeddings=s.max_positions)
        self.generation_config = SimpleNamespace(eos_token_id=list(self.eos_token_id))

    # -- the surface other parts use -----------------------------------------------------------

    def batch_runner(self) -> Any:
        from bot.models.native.runner import NativeRunner

        return NativeRunner(self)

    def named_modules(self) -> Iterator[tuple[str, Any]]:
        """(name, object with in_features/out_features) of every projection, by its transformers name,
        so adapter checks (bot.adapters.spec) see the same module map as on a transformers model."""
        yield "model.embed_tokens", SimpleNamespace()
        for i in range(self.shape.num_layers):
            for name, (fan_in, fan_out) in self.shape.linear_shapes().items():
                yield f"model.layers.{i}.{name}", SimpleNamespace(in_features=fan_in, out_features=fan_out)
        yield "lm_head", SimpleNamespace(in_features=self.shape.hidden_size, out_features=self.shape.vocab_size)

    def embed_tokens(self, tokens: Sequence[int]) -> Any:
        import torch

        return self.embed.index_select(0, torch.tensor(list(tokens), dtype=torch.long))

    def weight_bytes(self) -> int:
        linears = [m for layer in self.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return sum(m.nbytes for m in [*linears, self.head])

    # -- LoRA ------------------------------------------------------------------------------------

    def lora_groups(self, loras: Sequence[str | None], tokens_per_row: int = 1) -> LoraGroups:
        """The adapters these rows name, each with its rows (as indices into rows × tokens_per_row)."""
        import torch

        named = {name for name in loras if name is not None}
        if not named:
            return []
        if len(named) == 1 and all(name is not None for name in loras):
            return [(self.loras[next(iter(named))], None)]
        groups: LoraGroups = []
        for name in sorted(named):
            rows = [i for i, n in enumerate(loras) if n == name]
            if tokens_per_row > 1:
                rows = [r * tokens_per_row + t for r in rows for t in range(tokens_per_row)]
            groups.append((self.loras[name], torch.tensor(rows, dtype=torch.long)))
        return groups

    @staticmethod
    def _add_lora(out: Any, x: Any, groups: LoraGroups, layer: int, slices: _Slices) -> None:
        """out[rows, slice of each projection] += B(A(x[rows])) * scaling for each group's adapter (as PEFT)."""
        for weights, rows in groups:
            deltas = weights.layers[layer]
            for name, start, end in slices:
                pair = deltas.get(name)
                if pair is None:
                    continue
                a, b = pair
                if rows is None:
                    out[:, start:end] += (x @ a.t() @ b.t()) * weights.scaling
                else:
                    part = (x.index_select(0, rows) @ a.t() @ b.t()) * weights.scaling
                    out[:, start:end].index_add_(0, rows, part)

    # -- prefill ---------------------------------------------------------------------------------

    def forward(self, past: list[LayerKV] | None, loras: Sequence[str | None], embeds: Any, mask: Any | None,
                positions: Any, *, every_position: bool = False) -> tuple[Any, list[LayerKV]]:
        """`embeds` [B, T, hidden] after `past` keys/values; `mask` [B, P + T] (1 = real, None: all
        real); `positions` [B, T]. Returns (logits of the last position [B, vocab] -- of every position,
        [B, T, vocab], with `every_position` -- and the keys/values of every layer)."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        rows, length, _ = embeds.shape
        prior = 0 if past is None else int(past[0][0].shape[2])
        groups = self.lora_groups(loras, length)
        cos, sin, _ = self._rope.at(positions)  # [B, T, D]
        cos, sin = cos[:, None], sin[:, None]
        allowed = None
        if mask is not None or prior:
            query = torch.arange(length)[:, None] + prior
            key = torch.arange(prior + length)[None, :]
            causal = key <= query  # [T, P+T]
            real = torch.ones(rows, prior + length, dtype=torch.bool) if mask is None else mask.bool()
            # every query sees itself, so a padded query position never attends to nothing (no NaN)
            allowed = ((real[:, None, :] & causal[None]) | (key == query)[None])[:, None]  # [B, 1, T, P+T]
        hidden = embeds.to(torch.float32)
        out_layers: list[LayerKV] = []
        group_size = s.num_heads // s.num_kv_heads
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, (s.hidden_size,), layer.attn_norm, s.rms_eps).reshape(rows * length, -1)
            qkv = layer.qkv(x)
            if groups:
                self._add_lora(qkv, x, groups, i, self._slices["qkv"])
            qkv = qkv.view(rows, length, -1)
            q = qkv[..., : s.q_size].view(rows, length, s.num_heads, s.head_dim).transpose(1, 2)
            k = qkv[..., s.q_size : s.q_size + s.kv_size].view(rows, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
            v = qkv[..., s.q_size + s.kv_size :].view(rows, length, s.num_kv_heads, s.head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            if past is not None:
                k = torch.cat([past[i][0], k], dim=2)
                v = torch.cat([past[i][1], v], dim=2)
            out_layers.append((k, v))
            keys = k.repeat_interleave(group_size, dim=1) if group_size > 1 else k
            values = v.repeat_interleave(group_size, dim=1) if group_size > 1 else v
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, is_causal=allowed is None,
                                                  scale=self.scale)
            attn = attn.transpose(1, 2).reshape(rows * length, s.q_size)
            o = layer.o(attn)
            if groups:
                self._add_lora(o, attn, groups, i, self._slices["o"])
            hidden = hidden + o.view(rows, length, -1)
            x = F.rms_norm(hidden, (s.hidden_size,), layer.mlp_norm, s.rms_eps).reshape(rows * length, -1)
            gate_up = layer.gate_up(x)
            if groups:
                self._add_lora(gate_up, x, groups, i, self._slices["gate_up"])
            act = F.silu(gate_up[:, : s.intermediate_size]) * gate_up[:, s.intermediate_size :]
            down = layer.down(act)
            if groups:
                self._add_lora(down, act, groups, i, self._slices["down"])
            hidden = hidden + down.view(rows, length, -1)
        if every_position:
            normed = F.rms_norm(hidden, (s.hidden_size,), self.norm, s.rms_eps).reshape(rows * length, -1)
            return self.head(normed.contiguous()).view(rows, length, -1), out_layers
        last = F.rms_norm(hidden[:, -1], (s.hidden_size,), self.norm, s.rms_eps).contiguous()
        return self.head(last), out_layers

    # -- decode ----------------------------------------------------------------------------------

    def decode(self, cache: Any, loras: Sequence[str | None], tokens: Sequence[int], mask: Any,
               positions: Any) -> Any:
        """Logits [rows, vocab] (a buffer reused by the next step) for one new token per row; appends
        each layer's new keys/values to `cache`. `mask` [rows, T+1] includes the new position."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        rows = len(tokens)
        if self._buffers is None or self._buffers.capacity < rows:
            self._buffers = _Buffers(s, rows)
        buf = self._buffers.rows(rows)
        buf.tokens.copy_(torch.tensor(tokens, dtype=torch.long))
        hidden = torch.index_select(self.embed, 0, buf.tokens, out=buf.hidden)
        cos, _, sin_signed = self._rope.at(positions[:, 0])  # [rows, D]
        cos, sin_signed = cos[:, None], sin_signed[:, None]
        bias = None if bool(mask.all()) else torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(
            mask == 0, float("-inf"))[:, None, None, :]
        groups = self.lora_groups(loras)
        if self.ops is not None:
            self._decode_layers_c(cache, hidden, buf, mask, positions, groups)
            return self.head(buf.x, buf.logits)
        for i, (layer, kv) in enumerate(zip(self.layers, cache.layers, strict=True)):
            self._decode_layer(i, layer, kv, hidden, buf, cos, sin_signed, bias, groups)
        x = F.rms_norm(hidden, (s.hidden_size,), self.norm, s.rms_eps)
        return self.head(x, buf.logits)

    def _layer_descs(self) -> Any:
        """The layers as the C step reads them (GGUF-block weights only; None otherwise), built once."""
        if self._descs is None:
            from bot.models.native.linear import BlockLinear

            linears = [(layer.qkv, layer.o, layer.gate_up, layer.down) for layer in self.layers]
            if all(isinstance(m, BlockLinear) for group in linears for m in group):
                self._descs = self.ops.layer_descs(self.layers)
            else:
                self._descs = False
        return self._descs or None

    def _decode_layers_c(self, cache: Any, hidden: Any, buf: _Step, mask: Any, positions: Any,
                         groups: LoraGroups) -> None:
        """Every layer of a decode step with the C operations; ends with the final norm in `buf.x`."""
        import torch

        s, ops = self.shape, self.ops
        rows = hidden.shape[0]
        threads = torch.get_num_threads()
        mask = mask.contiguous()
        pos = positions[:, 0].contiguous()
        cos, sin = self._rope.cos, self._rope.sin  # at() grew them to cover every position
        width = s.q_size + 2 * s.kv_size
        h, x, qkv, attn = hidden.data_ptr(), buf.x.data_ptr(), buf.qkv.data_ptr(), buf.attn.data_ptr()
        group = s.num_heads // s.num_kv_heads
        descs = None if groups else self._layer_descs()
        if descs is not None:  # one call for every layer (no LoRA row in this step)
            slots = [kv.slot() for kv in cache.layers]
            keys = ops.pointers([k.data_ptr() for k, _, _ in slots])
            values = ops.pointers([v.data_ptr() for _, v, _ in slots])
            capacity, at = slots[0][0].shape[-2], slots[0][2]
            ops.decode_layers(descs, len(self.layers), keys, values, capacity, at, h, x, qkv, attn,
                              buf.o.data_ptr(), buf.gate_up.data_ptr(), buf.act.data_ptr(), buf.down.data_ptr(),
                              self.norm.data_ptr(), mask.data_ptr(), mask.shape[1], pos.data_ptr(), cos.data_ptr(),
                              sin.data_ptr(), rows, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim,
                              s.intermediate_size, s.rms_eps, self.scale, threads)
            for kv in cache.layers:
                kv.commit()
            return
        ops.rms_norm(h, self.layers[0].attn_norm.data_ptr(), x, rows, s.hidden_size, s.rms_eps)
        last = len(self.layers) - 1
        for i, (layer, kv) in enumerate(zip(self.layers, cache.layers, strict=True)):
            layer.qkv(buf.x, buf.qkv)
            if groups:
                self._add_lora(buf.qkv, buf.x, groups, i, self._slices["qkv"])
            keys, values, at = kv.slot()
            ops.rope_store(qkv, width, s.num_heads, s.num_kv_heads, s.head_dim, cos.data_ptr(), sin.data_ptr(),
                           pos.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.shape[-2], at, rows)
            kv.commit()
            ops.attend(qkv, width, keys.data_ptr(), values.data_ptr(), keys.shape[-2], at + 1, mask.data_ptr(),
                       mask.shape[1], attn, rows, s.num_kv_heads, group, s.head_dim, self.scale, threads)
            layer.o(buf.attn, buf.o)
            if groups:
                self._add_lora(buf.o, buf.attn, groups, i, self._slices["o"])
            ops.add_rms_norm(h, buf.o.data_ptr(), s.hidden_size, layer.mlp_norm.data_ptr(), x, rows, s.hidden_size,
                             s.rms_eps)
            layer.gate_up(buf.x, buf.gate_up)
            if groups:
                self._add_lora(buf.gate_up, buf.x, groups, i, self._slices["gate_up"])
            ops.silu_mul(buf.gate_up.data_ptr(), buf.act.data_ptr(), rows, s.intermediate_size)
            layer.down(buf.act, buf.down)
            if groups:
                self._add_lora(buf.down, buf.act, groups, i, self._slices["down"])
            norm = self.norm if i == last else self.layers[i + 1].attn_norm
            ops.add_rms_norm(h, buf.down.data_ptr(), s.hidden_size, norm.data_ptr(), x, rows, s.hidden_size,
                             s.rms_eps)

    def _decode_layer(self, i: int, layer: Layer, kv: Any, hidden: Any, buf: _Step, cos: Any,
                      sin_signed: Any, bias: Any, groups: LoraGroups) -> None:
        import torch
        import torch.nn.functional as F

        s = self.shape
        rows = hidden.shape[0]
        half = s.head_dim // 2
        x = F.rms_norm(hidden, (s.hidden_size,), layer.attn_norm, s.rms_eps)
        qkv = layer.qkv(x, buf.qkv)
        if groups:
            self._add_lora(qkv, x, groups, i, self._slices["qkv"])
        qk_heads = s.num_heads + s.num_kv_heads
        qk = qkv[:, : qk_heads * s.head_dim].view(rows, qk_heads, s.head_dim)
        rotated = qk * cos
        rotated += torch.roll(qk, half, dims=-1) * sin_signed
        q = rotated[:, : s.num_heads].view(rows, s.num_kv_heads, s.num_heads // s.num_kv_heads, s.head_dim)
        k = rotated[:, s.num_heads :].unsqueeze(2)  # [rows, kv_heads, 1, D]
        v = qkv[:, qk_heads * s.head_dim :].view(rows, s.num_kv_heads, 1, s.head_dim)
        keys, values = kv.update(k, v)
        # q·kᵀ, softmax, ·v as plain batched matmuls: for one query per row this beats SDPA's CPU
        # kernels (~1 ms a call) by far
        scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.scale)  # [rows, kv_heads, group, T]
        if bias is not None:
            scores += bias
        attn = torch.matmul(torch.softmax(scores, dim=-1), values).reshape(rows, s.q_size)
        o = layer.o(attn, buf.o)
        if groups:
            self._add_lora(o, attn, groups, i, self._slices["o"])
        hidden += o
        x = F.rms_norm(hidden, (s.hidden_size,), layer.mlp_norm, s.rms_eps)
        gate_up = layer.gate_up(x, buf.gate_up)
        if groups:
            self._add_lora(gate_up, x, groups, i, self._slices["gate_up"])
        gate = gate_up[:, : s.intermediate_size]
        act = torch.mul(F.silu(gate, inplace=True), gate_up[:, s.intermediate_size :], out=buf.act)
        down = layer.down(act, buf.down)
        if groups:
            self._add_lora(down, act, groups, i, self._slices["down"])
        hidden += down


PLAIN_CACHES = PlainCaches()
