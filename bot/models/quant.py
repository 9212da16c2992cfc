"""8-bit weights for the local model on the CPU: a quarter of the bytes to read per decoded token.

A decode step of a small model on a CPU is bound by reading its weights (SmolLM2-135M in float32:
~540 MB per token). `quantize_linears(model, kernel)` replaces every `nn.Linear` of the decoder layers
and the output head with a `QuantLinear`: int8 weights with one float32 scale per output channel
(symmetric, round to nearest), activations untouched (weight-only). Small batches (decode: one row
per conversation) multiply with the AVX2 kernel of `bot.models.w8kernel`; long inputs (prefill) are
compute-bound, so they dequantize the layer to float32 and use MKL's sgemm. Both compute with the
same int8 weights.

What stays float32: the token embeddings (soft prompts are embeddings too), the norms, the KV cache,
and every LoRA adapter: PEFT wraps a QuantLinear like any Linear (it is one) and adds its float delta
on top. The float32 model is the exact reference (`BOT_MODEL__QUANTIZE=none`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bot.models.w8kernel import W8Kernel

log = logging.getLogger(__name__)

#: Rows up to which the int8 kernel is used; longer inputs dequantize and use sgemm (compute-bound).
KERNEL_MAX_ROWS = 32


def _quant_linear_class() -> type:
    import torch

    class QuantLinear(torch.nn.Linear):
        """An nn.Linear whose `weight` is an int8 buffer [out, in] with float32 `scales` [out]."""

        kernel: W8Kernel
        scales: torch.Tensor

        def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                     kernel: W8Kernel) -> None:
            torch.nn.Module.__init__(self)
            self.out_features, self.in_features = qweight.shape
            self.kernel = kernel
            self.register_buffer("weight", qweight.contiguous())
            self.register_buffer("scales", scales.float().contiguous())
            self.register_buffer("bias", None if bias is None else bias.float().contiguous())

        @classmethod
        def quantize(cls, linear: torch.nn.Linear, kernel: W8Kernel) -> QuantLinear:
            qweight, scales = quantize_weight(linear.weight.detach())
            return cls(qweight, scales, None if linear.bias is None else linear.bias.detach(), kernel)

        def dequantized(self) -> torch.Tensor:
            return torch.mul(self.weight, self.scales[:, None])  # int8 x float32 -> float32 in one pass

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.reshape(-1, self.in_features)
            if rows.shape[0] > KERNEL_MAX_ROWS:
                return torch.nn.functional.linear(x.float(), self.dequantized(), self.bias)
            out = self.kernel.matmul(rows.float().contiguous(), self.weight, self.scales)
            if self.bias is not None:
                out += self.bias
            return out.reshape(*x.shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"

    return QuantLinear


def quantize_weight(weight: Any) -> tuple[Any, Any]:
    """(int8 weights, float32 scale per output row): symmetric, round to nearest."""
    import torch

    weight = weight.float()
    scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


_CLASS: list[type] = []


def quant_linear_class() -> type:
    if not _CLASS:
        _CLASS.append(_quant_linear_class())
    return _CLASS[0]


def is_quantized(model: Any) -> bool:
    cls = quant_linear_class()
    return any(isinstance(m, cls) for m in model.modules())


def quantize_linears(model: Any, kernel: W8Kernel, cache_file: Path | None = None) -> int:
    """Replace the decoder's and the output head's Linear layers with int8 QuantLinear, in place;
    returns the bytes of weights stored (int8 + scales).

    `cache_file` (safetensors): read the int8 weights from it when it exists -- the float32 weights of
    those layers are then never read (they stay unread pages of the memory-mapped checkpoint) --
    or write them there after quantizing, so the next start skips this work.
    The token embeddings stay float32 even when the output head shares them (tied weights): the head
    gets its own int8 copy. Call before any LoRA is loaded (an AdapterBank wraps what it finds).
    """
    import torch

    if any(hasattr(module, "lora_A") for module in model.modules()):
        raise ValueError("quantize the base model before loading LoRA adapters")
    cls: Any = quant_linear_class()
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and (name == "lm_head" or ".layers." in f".{name}")]
    stored = read_cache(cache_file, [name for name, _ in targets])
    total = 0
    with torch.no_grad():
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if stored is not None:
                quantized = cls(stored[f"{name}.weight"], stored[f"{name}.scales"], stored.get(f"{name}.bias"), kernel)
            else:
                quantized = cls.quantize(module, kernel)
            total += quantized.weight.nbytes + quantized.scales.nbytes
            setattr(parent, child, quantized)
    if stored is None and cache_file is not None:
        _write_cache(cache_file, model, [name for name, _ in targets])
    _fuse_projections(model, cls)
    if getattr(model.config, "tie_word_embeddings", False):
        # The head has its own int8 copy now; nothing may tie it back to the float embeddings.
        model.config.tie_word_embeddings = False
    log.info("int8 weights for %d linear layers (%.0f MiB)", len(targets), total / 2**20)
    return total


class Fused:
    """Several int8 projections of the same input stored as one [sum(out), in] matrix, so a decode step
    runs one kernel call for them (q/k/v; gate/up). The QuantLinear modules keep views of its rows
    (row slices of a row-major matrix are contiguous), so nothing is stored twice."""

    def __init__(self, weight: Any, scales: Any, sizes: list[int], kernel: W8Kernel) -> None:
        self.weight, self.scales, self.sizes, self.kernel = weight, scales, sizes, kernel

    def __call__(self, rows: Any) -> Any:
        return self.kernel.matmul(rows, self.weight, self.scales)


#: (owner attribute path, projections fused, attribute set on the owner)
_FUSIONS = (("self_attn", ("q_proj", "k_proj", "v_proj"), "bot_fused_qkv"),
            ("mlp", ("gate_proj", "up_proj"), "bot_fused_gate_up"))


def _fuse_projections(model: Any, cls: type) -> None:
    import torch

    for layer in getattr(getattr(model, "model", None), "layers", []):
        for owner_name, names, attribute in _FUSIONS:
            owner = getattr(layer, owner_name, None)
            parts: list[Any] = [getattr(owner, name, None) for name in names]
            if owner is None or not all(type(p) is cls and getattr(p, "bias", None) is None for p in parts):
                continue
            weight = torch.cat([p.weight for p in parts]).contiguous()
            scales = torch.cat([p.scales for p in parts]).contiguous()
            start = 0
            for part in parts:
                end = start + part.out_features
                part.weight, part.scales = weight[start:end], scales[start:end]
                start = end
            setattr(owner, attribute, Fused(weight, scales, [p.out_features for p in parts], parts[0].kernel))


def read_cache(cache_file: Path | None, names: list[str]) -> dict[str, Any] | None:
    """The cached int8 tensors for exactly these layers, or None (missing, stale or unreadable)."""
    if cache_file is None or not cache_file.is_file():
        return None
    from bot.models.tensorfile import read_file

    try:
        tensors, _ = read_file(cache_file)  # read, not memory-mapped: see bot.models.tensorfile
    except Exception as exc:  # a torn or foreign file: quantize again and overwrite it
        log.warning("ignoring unreadable int8 cache %s: %s", cache_file, exc)
        return None
    if not all(f"{name}.weight" in tensors and f"{name}.scales" in tensors for name in names):
        return None
    return tensors


def _write_cache(cache_file: Path, model: Any, names: list[str]) -> None:
    tensors: dict[str, Any] = {}
    for name in names:
        module = model.get_submodule(name)
        tensors[f"{name}.weight"] = module.weight.contiguous()
        tensors[f"{name}.scales"] = module.scales.contiguous()
        if module.bias is not None:
            tensors[f"{name}.bias"] = module.bias.contiguous()
    write_cache(cache_file, tensors)


def write_cache(cache_file: Path, tensors: dict[str, Any]) -> None:
    """Save int8 tensors (`<layer>.weight`, `<layer>.scales`) atomically; a failure only logs."""
    from safetensors.torch import save_file

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    try:
        save_file(tensors, str(tmp))
        tmp.replace(cache_file)  # atomic: a concurrent start never reads half a file
    except OSError as exc:
        log.warning("could not cache the int8 weights in %s: %s", cache_file, exc)
