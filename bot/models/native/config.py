"""Which models the native forward serves: Llama-family decoders, judged from their config.json alone.

    shape = read_shape(json.loads((directory / "config.json").read_text()))   # or NotNative(reason)

Served: `model_type` llama (or mistral without a sliding window), SiLU MLP without biases, attention
without biases, default rotary embeddings over the whole head, grouped-query attention, tied or
untied output head. Anything else (another architecture, rope scaling, sliding windows, biases) raises
`NotNative` with the reason, and the loader falls back to the transformers forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_TYPES = ("llama", "mistral")


class NotNative(Exception):
    """The native forward cannot serve this model (or adapter) exactly; the reason says why."""


@dataclass(frozen=True, slots=True)
class LlamaShape:
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    tied_embeddings: bool

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection inside a layer, by its transformers name."""
        h, i = self.hidden_size, self.intermediate_size
        return {"self_attn.q_proj": (h, self.q_size), "self_attn.k_proj": (h, self.kv_size),
                "self_attn.v_proj": (h, self.kv_size), "self_attn.o_proj": (self.q_size, h),
                "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h)}


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise NotNative(f"unreadable rope parameters {rope!r}")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in (None, "default"):
        raise NotNative(f"rope type {kind!r} (only the default rotary embedding is native)")
    if float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise NotNative("partial rotary embeddings")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def read_shape(config: dict[str, Any]) -> LlamaShape:
    """The shape of a Llama-family model from its config.json, or NotNative naming what does not fit."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise NotNative(f"architecture {model_type!r} (native: {', '.join(SUPPORTED_TYPES)})")
    act = config.get("hidden_act", config.get("hidden_activation", "silu"))
    checks = {
        f"activation {act!r}": act != "silu",
        "attention biases": bool(config.get("attention_bias")),
        "MLP biases": bool(config.get("mlp_bias")),
        "a sliding attention window": bool(config.get("sliding_window")) or "sliding_attention" in str(
            config.get("layer_types") or ""),
        "tensor-parallel pretraining slices": int(config.get("pretraining_tp", 1) or 1) != 1,
    }
    problems = [name for name, bad in checks.items() if bad]
    if problems:
        raise NotNative(", ".join(problems))
    try:
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        hidden = int(config["hidden_size"])
        shape = LlamaShape(
            architecture=str((config.get("architectures") or ["LlamaForCausalLM"])[0]),
            model_type=str(model_type),
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(config),
            max_positions=int(config.get("max_position_embeddings") or 2048),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotNative(f"config.json: {type(exc).__name__}: {exc}") from exc
    if heads % kv_heads or shape.head_dim % 2:
        raise NotNative(f"{heads} attention heads over {kv_heads} key/value heads of size {shape.head_dim}")
    return shape
