"""The GGUF file's own quantized blocks for every projection and the output head, verified and cached.

    problem = extract_blocks(gguf_path, shape, reference_dir, target_file)   # None: written

Reads each weight's raw blocks (Q4_1 or Q8_0) from the GGUF with the `gguf` package, puts the rows of
q/k projections back in transformers' order (llama.cpp's converter permutes them for its rotary
layout, and transformers' loader undoes it), and checks that the blocks dequantize BIT FOR BIT to the
float32 reference weights in the converted model (`model.safetensors`). Only then are they written
(`gguf-blocks.safetensors`: per projection the blocks' bytes as planes -- `<name>.qs` values, `.d`
scales, `.m` minimums, see bot.models.qkernel.Planes --, projections that read the same input fused,
kinds in the metadata).
So the 4-bit path computes with exactly the reference's weights; any tensor of another block type,
or one that does not match, makes the whole model use int8 instead (the reason is returned).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bot.models.native.config import LlamaShape

log = logging.getLogger(__name__)

BLOCKS_FILE = "gguf-blocks.safetensors"
#: Changes when what the cache holds changes (an older cache is extracted again).
LAYOUT = "planes-1"
_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
KINDS = {"Q4_1": "q4_1", "Q8_0": "q8_0"}


def dequantize(kind: str, blocks: Any, in_features: int) -> Any:
    """numpy float32 [rows, in_features] from raw blocks [rows, bytes], as gguf-py computes it."""
    import numpy as np

    rows = blocks.shape[0]
    if kind == "q4_1":
        b = blocks.reshape(rows, -1, 20)
        d = b[..., 0:2].copy().view(np.float16).astype(np.float32)
        m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[..., 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
        return ((d * q) + m).reshape(rows, in_features)
    b = blocks.reshape(rows, -1, 34)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = b[..., 2:34].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(rows, in_features)


def _unpermute(rows: Any, heads: int) -> Any:
    """transformers' reverse_permute_weights applied to row indices (q: all heads, k: kv heads)."""
    n = rows.shape[0]
    dim = n // heads // 2
    return rows.reshape(heads, dim, 2, *rows.shape[1:]).swapaxes(2, 1).reshape(rows.shape)


def _reference(reference_dir: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it (one file, or an index of shards)."""
    index = reference_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: reference_dir / file for name, file in weight_map.items()}
    from safetensors import safe_open

    single = reference_dir / "model.safetensors"
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def extract_blocks(gguf_path: Path, shape: LlamaShape, reference_dir: Path, target: Path) -> str | None:
    """Write the verified blocks to `target`; returns why not (nothing written) or None."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from safetensors import safe_open
    from safetensors.torch import save_file

    reader = GGUFReader(str(gguf_path))
    in_file = {t.name: t for t in reader.tensors}
    files = _reference(reference_dir)
    wanted = [(f"model.layers.{i}.{name}", f"blk.{i}.{gguf}.weight", shape.linear_shapes()[name][0])
              for i in range(shape.num_layers) for name, gguf in _GGUF_NAMES.items()]
    head = "output.weight" if "output.weight" in in_file else "token_embd.weight"
    wanted.append(("lm_head", head, shape.hidden_size))
    from bot.models.qkernel import planes_of

    out: dict[str, Any] = {}
    for name, gguf_name, fan_in in wanted:
        tensor = in_file.get(gguf_name)
        if tensor is None:
            return f"{gguf_name} is not in the GGUF"
        kind = KINDS.get(tensor.tensor_type.name)
        if kind is None:
            return f"{gguf_name} is {tensor.tensor_type.name} (served natively: {', '.join(KINDS)})"
        blocks = np.asarray(tensor.data).reshape(int(tensor.shape[-1]) if len(tensor.shape) > 1 else -1, -1)
        if ".attn_q." in gguf_name:
            blocks = _unpermute(blocks, shape.num_heads)
        elif ".attn_k." in gguf_name:
            blocks = _unpermute(blocks, shape.num_kv_heads)
        reference_name = "model.embed_tokens.weight" if name == "lm_head" and head == "token_embd.weight" else (
            "lm_head.weight" if name == "lm_head" else f"{name}.weight")
        file = files.get(reference_name)
        if file is None:
            return f"{reference_name} is not in the converted model"
        with safe_open(str(file), framework="pt") as f:
            reference = f.get_tensor(reference_name).float().numpy()
        if reference.shape != (blocks.shape[0], fan_in) or not np.array_equal(dequantize(kind, blocks, fan_in),
                                                                               reference):
            return f"{gguf_name} does not dequantize to the reference weights {reference_name}"
        out[name] = planes_of(kind, torch.from_numpy(np.array(blocks, copy=True)), fan_in)
    _fuse(out, shape.num_layers)
    tensors: dict[str, Any] = {}
    for name, planes in out.items():
        tensors[f"{name}.qs"], tensors[f"{name}.d"] = planes.qs, planes.d
        if planes.m is not None:
            tensors[f"{name}.m"] = planes.m
    metadata = {"kinds": json.dumps({n: p.kind for n, p in out.items()}), "layout": LAYOUT,
                "in_features": json.dumps({n: p.in_features for n, p in out.items()}), "source": gguf_path.name}
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(target)
    log.info("cached the GGUF's own blocks of %d weights in %s", len(out), target)
    return None


FUSED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj")}


def _fuse(planes: dict[str, Any], layers: int) -> None:
    """Stack the rows of projections that read the same input, as the native forward calls them
    (one matrix, one kernel call), when they share a block type."""
    from bot.models.qkernel import fuse_planes

    for i in range(layers):
        for fused, parts in FUSED.items():
            names = [f"model.layers.{i}.{p}" for p in parts]
            if len({planes[n].kind for n in names}) == 1:
                planes[f"model.layers.{i}.{fused}"] = fuse_planes([planes.pop(n) for n in names])


def read_blocks(file: Path) -> dict[str, Any]:
    """name -> qkernel.Planes from a cache written by `extract_blocks` (fused projections under
    "<layer>.qkv" / "<layer>.gate_up")."""
    from bot.models.qkernel import Planes
    from bot.models.tensorfile import read_file

    tensors, metadata = read_file(file)
    if metadata.get("layout") != LAYOUT:
        raise ValueError(f"block cache layout {metadata.get('layout')!r}, expected {LAYOUT!r}")
    kinds, widths = json.loads(metadata["kinds"]), json.loads(metadata["in_features"])
    return {name: Planes(kind, tensors[f"{name}.qs"], tensors[f"{name}.d"], tensors.get(f"{name}.m"), widths[name])
            for name, kind in kinds.items()}
