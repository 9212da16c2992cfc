"""The native forward's weight matrices: float32, int8 (per-channel scales) or a GGUF's own blocks.

Every kind multiplies `x [M, K]` into `out [M, N]` (a caller's preallocated buffer, or a new tensor).
Decode (a few rows) runs the C kernels on the stored weights; long inputs (prefill) are compute-bound,
so they get the float32 weights once per call (dequantized into a reused scratch buffer) and MKL.
`fuse` stacks the rows of projections that read the same input (q/k/v, gate/up) into one matrix,
so a decode step makes one call for them.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

#: Rows up to which the quantized kernels are used; longer inputs dequantize and use sgemm (measured
#: on 1 thread, all projections of SmolLM2: int8 kernel ≈ dequantize + sgemm at ~32 rows, Q4_1 at ~24).
KERNEL_MAX_ROWS = 32
BLOCK_KERNEL_MAX_ROWS = 24


class Linear(Protocol):
    in_features: int
    out_features: int
    kind: str  # "float32", "int8", "q4_1", "q8_0"

    def __call__(self, x: Any, out: Any = None) -> Any:
        ...

    @property
    def nbytes(self) -> int:
        ...


class DenseLinear:
    kind = "float32"

    def __init__(self, weight: Any) -> None:
        self.weight = weight.contiguous()
        self.out_features, self.in_features = self.weight.shape

    def __call__(self, x: Any, out: Any = None) -> Any:
        import torch

        return torch.mm(x, self.weight.t(), out=out) if out is not None else torch.mm(x, self.weight.t())

    @property
    def nbytes(self) -> int:
        return int(self.weight.nbytes)


class _Scratch:
    """One float32 buffer per thread for dequantized weights (prefill), grown as needed."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, n: int, k: int) -> Any:
        import torch

        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < n * k:
            buffer = self._local.buffer = torch.empty(n * k, dtype=torch.float32)
        return buffer[: n * k].view(n, k)


_SCRATCH = _Scratch()


class Int8Linear:
    """int8 weights [N, K], one float32 scale per output row (bot.models.w8kernel)."""

    kind = "int8"

    def __init__(self, qweight: Any, scales: Any, kernel: Any) -> None:
        self.qweight, self.scales, self.kernel = qweight.contiguous(), scales.float().contiguous(), kernel
        self.out_features, self.in_features = self.qweight.shape

    def dequantized(self, out: Any = None) -> Any:
        import torch

        return torch.mul(self.qweight, self.scales[:, None], out=out) if out is not None else torch.mul(
            self.qweight, self.scales[:, None])

    def __call__(self, x: Any, out: Any = None) -> Any:
        import torch

        if x.shape[0] > KERNEL_MAX_ROWS:
            weight = self.dequantized(_SCRATCH.get(self.out_features, self.in_features))
            return torch.mm(x, weight.t(), out=out) if out is not None else torch.mm(x, weight.t())
        return self.kernel.matmul(x, self.qweight, self.scales, out)

    @property
    def nbytes(self) -> int:
        return int(self.qweight.nbytes + self.scales.nbytes)


class BlockLinear:
    """A GGUF's own quantized blocks (Q4_1 or Q8_0) as planes (bot.models.qkernel)."""

    def __init__(self, planes: Any, kernel: Any) -> None:
        self.planes, self.kernel = planes, kernel
        self.kind, self.in_features, self.out_features = planes.kind, planes.in_features, planes.rows

    def dequantized(self, out: Any = None) -> Any:
        return self.kernel.dequantize(self.planes, out)

    def __call__(self, x: Any, out: Any = None) -> Any:
        import torch

        if x.shape[0] > BLOCK_KERNEL_MAX_ROWS:
            weight = self.dequantized(_SCRATCH.get(self.out_features, self.in_features))
            return torch.mm(x, weight.t(), out=out) if out is not None else torch.mm(x, weight.t())
        if out is None:
            out = torch.empty((x.shape[0], self.out_features), dtype=torch.float32)
        return self.kernel.matmul(self.planes, x, out)

    @property
    def nbytes(self) -> int:
        return int(self.planes.nbytes)


def fuse(parts: list[Any]) -> Any:
    """One matrix whose output rows are `parts`' outputs one after another (same kind, same input)."""
    import torch

    first = parts[0]
    if any(type(p) is not type(first) or p.kind != first.kind or p.in_features != first.in_features
           for p in parts):
        raise ValueError("only projections of one kind and one input width can be fused")
    if isinstance(first, DenseLinear):
        return DenseLinear(torch.cat([p.weight for p in parts]))
    if isinstance(first, Int8Linear):
        return Int8Linear(torch.cat([p.qweight for p in parts]), torch.cat([p.scales for p in parts]), first.kernel)
    from bot.models.qkernel import fuse_planes

    return BlockLinear(fuse_planes([p.planes for p in parts]), first.kernel)
