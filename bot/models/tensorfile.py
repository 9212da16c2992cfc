"""Read a whole safetensors file into memory with one read() (no memory mapping).

On this kind of virtual machine, faulting in the pages of a memory-mapped file costs ~40 µs per 4 KiB
page: touching a 96 MiB mmap'd weight file for the first time took ~1 s, where one read() of the
same (cached) file into anonymous memory took 0.05 s. Weight caches are read whole, once, at start,
so they are read, not mapped. Tensors are views into the one buffer when aligned (copies otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

_DTYPES = {"U8": "uint8", "I8": "int8", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "F64": "float64", "BOOL": "bool"}


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(name -> tensor, metadata) of a safetensors file. ValueError for a malformed file."""
    import torch

    with path.open("rb") as file:
        size = path.stat().st_size
        head = file.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise ValueError(f"{path}: header length {length} does not fit the file")
        header = json.loads(file.read(length))
        buffer = torch.empty(size - 8 - length, dtype=torch.uint8)
        if file.readinto(memoryview(cast(Any, buffer.numpy()))) != buffer.numel():
            raise ValueError(f"{path}: truncated")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = getattr(torch, _DTYPES[info["dtype"]])
        raw = buffer[start:end]
        item = torch.empty(0, dtype=dtype).element_size()
        if start % item:
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(info["shape"])
    return tensors, metadata
