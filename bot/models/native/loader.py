"""Load a Llama-family model for the native forward, without importing transformers or PEFT.

    model, tokenizer = load_native(directory, weights="gguf", caches=NativeCaches(...))

Reads config.json (`read_shape`: NotNative for models it cannot serve exactly), the float32 reference
weights from the converted safetensors (memory-mapped: projections served quantized are never read),
the tokenizer artifact (`bot.models.native.tokenizer`), and the projections as asked:

    gguf   the GGUF's own Q4_1/Q8_0 blocks (verified bit for bit against the float32 weights and cached
           in gguf-blocks.safetensors on first use); exact against the float32 reference
    int8   per-channel int8, the same cache file (and the same numbers) as the transformers path
    none   float32, the reference

Each step down happens with a log line when the step above is impossible (no compiler: float32; a
GGUF with other block types, or no GGUF: int8).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.models.native.config import LlamaShape, NotNative, read_shape
from bot.models.native.linear import BlockLinear, DenseLinear, Int8Linear, Linear, fuse
from bot.models.native.model import Layer, NativeLlama

log = logging.getLogger(__name__)

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class NativeCaches:
    """Where the derived artifacts of one model live (None: not cached, e.g. a user's own model directory)."""

    kernels: Path
    int8: Path | None = None
    blocks: Path | None = None
    gguf: Path | None = None  # the source GGUF, to extract its blocks from


class _Reference:
    """The converted model's tensors by name (one safetensors file or an index of shards), read lazily."""

    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open

        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (directory / "model.safetensors").is_file():
            files, weight_map = ["model.safetensors"], None
        else:
            raise NotNative(f"no safetensors weights in {directory}")
        self._open = {file: safe_open(str(directory / file), framework="pt") for file in files}
        self._where = weight_map or {name: files[0] for name in self._open[files[0]].keys()}  # noqa: SIM118

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Any:
        if name not in self._where:
            raise NotNative(f"{name} is missing from the weights")
        return self._open[self._where[name]].get_tensor(name).float()


def _linears(weights: str, shape: LlamaShape, reference: _Reference, caches: NativeCaches
             ) -> tuple[str, dict[str, Linear]]:
    """(weights actually used, name -> Linear) for every projection and "lm_head" (fused ones may come
    as "<layer>.qkv" / "<layer>.gate_up" instead of their parts)."""
    names = [f"model.layers.{i}.{p}" for i in range(shape.num_layers) for p in PROJECTIONS] + ["lm_head"]
    if weights == "gguf":
        linears = _gguf_linears(shape, reference, caches, names)
        if linears is not None:
            return "gguf", linears
        weights = "int8"
    if weights == "int8":
        linears = _int8_linears(shape, reference, caches, names)
        if linears is not None:
            return "int8", linears
    return "float32", {name: DenseLinear(reference.get(_reference_name(name, shape, reference))) for name in names}


def _reference_name(name: str, shape: LlamaShape, reference: _Reference) -> str:
    if name == "lm_head":
        return "lm_head.weight" if "lm_head.weight" in reference else "model.embed_tokens.weight"
    return f"{name}.weight"


def _gguf_linears(shape: LlamaShape, reference: _Reference, caches: NativeCaches, names: list[str]
                  ) -> dict[str, Linear] | None:
    from bot.models import qkernel
    from bot.models.native.gguf_blocks import extract_blocks, read_blocks

    if caches.blocks is None or (caches.gguf is None and not caches.blocks.is_file()):
        log.info("not a GGUF model: int8 weights instead of the GGUF's own blocks")
        return None
    kernel = qkernel.load(caches.kernels)
    if kernel is None:
        return None
    if not caches.blocks.is_file():
        assert caches.gguf is not None
        problem = extract_blocks(caches.gguf, shape, caches.blocks.parent, caches.blocks)
        if problem is not None:
            log.warning("serving int8 weights: the GGUF's own blocks cannot be used (%s)", problem)
            return None
    try:
        planes = read_blocks(caches.blocks)
    except Exception as exc:  # a torn, foreign or older file: extract again (if the GGUF is there)
        log.warning("ignoring the GGUF block cache %s: %s", caches.blocks, exc)
        caches.blocks.unlink(missing_ok=True)
        if caches.gguf is None:
            return None
        return _gguf_linears(shape, reference, caches, names)
    fused = {f"model.layers.{i}.{group}" for i in range(shape.num_layers) for group in ("qkv", "gate_up")}
    expected = set(names) | fused
    if set(planes) - expected:
        log.warning("ignoring a GGUF block cache of another model: %s", caches.blocks)
        return None
    return {name: BlockLinear(p, kernel) for name, p in planes.items()}


def _int8_linears(shape: LlamaShape, reference: _Reference, caches: NativeCaches, names: list[str]
                  ) -> dict[str, Linear] | None:
    from bot.models import w8kernel
    from bot.models.quant import quantize_weight, read_cache, write_cache

    kernel = w8kernel.load(caches.kernels)
    if kernel is None:
        return None
    stored = read_cache(caches.int8, names)
    if stored is None:
        stored = {}
        for name in names:
            stored[f"{name}.weight"], stored[f"{name}.scales"] = quantize_weight(
                reference.get(_reference_name(name, shape, reference)))
        if caches.int8 is not None:
            write_cache(caches.int8, stored)
    return {name: Int8Linear(stored[f"{name}.weight"], stored[f"{name}.scales"], kernel) for name in names}


def _eos(directory: Path) -> list[int]:
    try:
        config = json.loads((directory / "generation_config.json").read_text())
    except (OSError, ValueError):
        return []
    eos = config.get("eos_token_id")
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def load_native(directory: Path, weights: str, caches: NativeCaches) -> NativeLlama:
    """The model in `directory` (config.json + safetensors) for the native forward, or NotNative."""
    try:
        shape = read_shape(json.loads((directory / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise NotNative(f"config.json: {exc}") from exc
    reference = _Reference(directory)
    used, linears = _linears(weights, shape, reference, caches)
    layers = []
    for i in range(shape.num_layers):
        prefix = f"model.layers.{i}"

        def part(name: str, prefix: str = prefix) -> Linear:
            return linears[f"{prefix}.{name}"]

        def fused(name: str, parts: tuple[str, ...], prefix: str = prefix) -> Linear:
            stored = linears.get(f"{prefix}.{name}")
            return stored if stored is not None else fuse([part(p) for p in parts])

        layers.append(Layer(
            attn_norm=reference.get(f"{prefix}.input_layernorm.weight"),
            qkv=fused("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            o=part("self_attn.o_proj"),
            mlp_norm=reference.get(f"{prefix}.post_attention_layernorm.weight"),
            gate_up=fused("gate_up", ("mlp.gate_proj", "mlp.up_proj")),
            down=part("mlp.down_proj"),
        ))
    from bot.models.native import ops

    model = NativeLlama(shape, reference.get("model.embed_tokens.weight"), layers, reference.get("model.norm.weight"),
                        linears["lm_head"], weights=used, eos_token_id=_eos(directory), name_or_path=str(directory),
                        ops=ops.load(caches.kernels))
    log.info("native %s forward with %s weights (%.0f MiB)", shape.architecture, used, model.weight_bytes() / 2**20)
    return model
