"""The decode step without transformers' per-call machinery: one token per row through a Llama-family
model, reading and writing the running batch's KV buffers directly.

A decode step of SmolLM2-135M is ~450 small operations; transformers' forward adds mask building,
cache bookkeeping, output dataclasses and (with PEFT) a hook registered on every LoRA layer for every
call. Here a step is: embed the rows' tokens; per layer RMSNorm → q/k/v (+ each row's LoRA) →
rotary embedding at each row's own position → write k/v into the layer's preallocated buffer at the
next position → grouped-query attention over the row's real positions (padding masked) → o_proj →
RMSNorm → SwiGLU MLP; final norm; the output head. The modules called are the model's own (norms,
rotary embedding, Linear or int8 QuantLinear, PEFT's LoRA A/B), so weights and numerics are shared
with the reference path.

LoRA rows: each LoRA layer adds `B(A(x[rows])) * scaling` for the rows that name that adapter (what
PEFT's mixed-batch forward computes), grouped once per step.

`FastDecoder.supports(model)` says whether a model fits (Llama architecture, plain LoRA); otherwise the
scheduler keeps transformers' forward for that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.models.batching.forward import base_of, is_peft

SUPPORTED_TYPES = frozenset({"llama"})


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastDecoder:
    """Decode steps for one (base) model. Stateless between steps; build once per scheduler."""

    def __init__(self, model: Any) -> None:
        base = base_of(model)
        self.base = base
        self.config = base.config
        self.inner = base.model
        self.heads = int(self.config.num_attention_heads)
        self.kv_heads = int(getattr(self.config, "num_key_value_heads", self.heads) or self.heads)
        self.head_dim = int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.heads)
        self.scale = self.head_dim**-0.5

    @staticmethod
    def supports(model: Any) -> bool:
        base = base_of(model)
        config = getattr(base, "config", None)
        if config is None or getattr(config, "model_type", None) not in SUPPORTED_TYPES:
            return False
        if getattr(config, "sliding_window", None) or getattr(config, "pretraining_tp", 1) != 1:
            return False
        inner = getattr(base, "model", None)
        return inner is not None and hasattr(inner, "rotary_emb") and hasattr(base, "lm_head")

    @staticmethod
    def plain_lora(model: Any) -> bool:
        """Every LoRA layer is the plain kind this decoder computes (no DoRA)."""
        if not is_peft(model):
            return True
        for module in base_of(model).modules():
            use_dora = getattr(module, "use_dora", None)
            if isinstance(use_dora, dict) and any(use_dora.values()):
                return False
        return True

    def __call__(self, cache: Any, loras: Sequence[str | None], tokens: Sequence[int], mask: Any,
                 positions: Any) -> Any:
        """Logits [rows, vocab] for one new token per row. `mask`: [rows, T+1] (1 = real position,
        including the new one); `positions`: [rows, 1] each row's position id for its new token."""
        import torch

        groups = _lora_groups(loras)
        inner = self.inner
        rows = len(tokens)
        hidden = inner.embed_tokens(torch.tensor(tokens, dtype=torch.long))  # [rows, hidden]
        cos, sin = inner.rotary_emb(hidden.unsqueeze(1), positions)  # [rows, 1, head_dim]
        cos, sin = cos.to(hidden.dtype), sin.to(hidden.dtype)
        # -inf on padding columns, added to every layer's scores (None: no row is padded)
        bias = None if bool(mask.all()) else torch.zeros(mask.shape, dtype=hidden.dtype).masked_fill_(
            mask == 0, float("-inf"))[:, None, None, :]
        qk_heads = self.heads + self.kv_heads
        for layer, kv in zip(inner.layers, cache.layers, strict=True):
            attn = layer.self_attn
            qkv = self._project(attn, "bot_fused_qkv", ("q_proj", "k_proj", "v_proj"),
                                _rms_norm(layer.input_layernorm, hidden), groups)
            qk = qkv[:, : qk_heads * self.head_dim].view(rows, qk_heads, self.head_dim)
            qk = qk * cos + _rotate_half(qk) * sin
            q = qk[:, : self.heads].reshape(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            k = qk[:, self.heads :].unsqueeze(2)  # [rows, kv_heads, 1, head_dim]
            v = qkv[:, qk_heads * self.head_dim :].view(rows, self.kv_heads, 1, self.head_dim)
            keys, values = kv.update(k, v)
            scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(self.scale)  # [rows, kv_heads, group, T]
            if bias is not None:
                scores += bias
            out = torch.matmul(torch.softmax(scores, dim=-1), values).reshape(rows, self.heads * self.head_dim)
            hidden = hidden + _linear(attn.o_proj, out, groups)
            mlp = layer.mlp
            gate, up = self._project(mlp, "bot_fused_gate_up", ("gate_proj", "up_proj"),
                                     _rms_norm(layer.post_attention_layernorm, hidden), groups).chunk(2, dim=-1)
            hidden = hidden + _linear(mlp.down_proj, mlp.act_fn(gate) * up, groups)
        return _linear(self.base.lm_head, _rms_norm(inner.norm, hidden), groups)

    @staticmethod
    def _project(owner: Any, fused_name: str, names: tuple[str, ...], x: Any, groups: LoraGroups) -> Any:
        """The concatenated outputs of several projections of x (one int8 kernel call when fused)."""
        import torch

        fused = getattr(owner, fused_name, None)
        if fused is None:
            return torch.cat([_linear(getattr(owner, name), x, groups) for name in names], dim=-1)
        out = fused(x)
        if groups:
            start = 0
            for name, size in zip(names, fused.sizes, strict=True):
                delta = _lora_delta(getattr(owner, name), x, groups)
                if delta is not None:
                    out[:, start : start + size] += delta
                start += size
        return out


def _rms_norm(norm: Any, x: Any) -> Any:
    import torch.nn.functional as F

    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


#: (adapter name, row indices or None for every row) for the rows that use a LoRA.
LoraGroups = list[tuple[str, Any]]


def _lora_groups(loras: Sequence[str | None]) -> LoraGroups:
    import torch

    named = {name for name in loras if name is not None}
    if not named:
        return []
    if len(named) == 1 and all(name is not None for name in loras):
        return [(next(iter(named)), None)]
    return [(name, torch.tensor([i for i, n in enumerate(loras) if n == name], dtype=torch.long))
            for name in sorted(named)]


def _lora_delta(module: Any, x: Any, groups: LoraGroups) -> Any:
    """The LoRA contribution of `module` for each row's adapter (None when no row's adapter wraps it)."""
    if not groups or not hasattr(module, "lora_A"):
        return None
    delta = None
    for name, rows in groups:
        if name not in module.lora_A:
            continue
        lora_a, lora_b, scaling = module.lora_A[name], module.lora_B[name], module.scaling[name]
        if rows is None:
            part = lora_b(lora_a(x)) * scaling
            delta = part if delta is None else delta + part
        else:
            part = lora_b(lora_a(x.index_select(0, rows))) * scaling
            base = x.new_zeros((x.shape[0], part.shape[1])) if delta is None else delta
            delta = base.index_add(0, rows, part)
    return delta


def _linear(module: Any, x: Any, groups: LoraGroups) -> Any:
    base = getattr(module, "base_layer", None)
    if base is None:
        return module(x)
    delta = _lora_delta(module, x, groups)
    out = base(x)
    return out if delta is None else out + delta


class FastPath:
    """The scheduler's handle on the fast decoder: `usable(model)` is re-checked only when the model
    object or its set of adapters changes (a PeftModel appears, an adapter is loaded)."""

    def __init__(self, model: Any) -> None:
        self.decoder = FastDecoder(model)
        self._key: tuple[int, int] | None = None
        self._ok = True

    @classmethod
    def for_model(cls, model: Any) -> FastPath | None:
        return cls(model) if FastDecoder.supports(model) else None

    def usable(self, model: Any) -> bool:
        key = (id(model), len(getattr(model, "peft_config", None) or {}))
        if key != self._key:
            self._key, self._ok = key, FastDecoder.plain_lora(model)
        return self._ok
