"""Where a decode step's time goes: transformers' forward (the float32 reference), the transformers fast
decoder with int8 weights (the serving default before the native engine), and the native engine with
the GGUF's own 4-bit blocks (the default now).

    .venv/bin/python bench/decode_profile.py [--threads 1] [--rows 1,8] [--steps 20] [--record]

One prefilled batch (--positions tokens per row) is advanced step by step through each path, the
paths taking turns (one step each, round robin) so a busy neighbour slows all alike. Reports the
fastest and the median step, and each part's share of the step (torch profiler, self time by op,
grouped): weight matrix multiplies (MKL sgemm/gemv, or the int8 / 4-bit kernels), attention, copies and
KV bookkeeping (cat/copy/index/slice), the native engine's C operations (norms, rotary, attention,
SiLU in one call each; used when a row has a LoRA), its whole-step C call (every layer: weights,
norms, attention -- the default when no row has a LoRA), the rest of the ATen ops (norms, rotary,
activations, adds), and Python (wall time not spent inside any of those: module calls, argument
handling, bookkeeping).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402
from bot.models import qkernel, w8kernel  # noqa: E402
from bot.models.batching import forward  # noqa: E402
from bot.models.batching.decode import FastDecoder  # noqa: E402
from bot.models.batching.kv import BatchState, PlainCaches, TransformersCaches, new_cache  # noqa: E402
from bot.models.local_loader import load_local_model, load_native_model, quantize_for_serving  # noqa: E402
from bot.settings import ModelSettings  # noqa: E402

GROUPS = {
    "weights": ("aten::mm", "aten::addmm", "aten::linear", "int8_matmul", "block_matmul"),
    "C ops": ("native_ops",),
    "C layers": ("native_layers",),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax",
                  "aten::matmul"),
    "copies / KV": ("aten::cat", "aten::copy_", "aten::index_select", "aten::slice", "aten::narrow",
                    "aten::empty", "aten::empty_strided", "aten::as_strided", "aten::_to_copy", "aten::to",
                    "aten::clone", "aten::contiguous", "aten::select", "aten::view", "aten::reshape",
                    "aten::expand", "aten::transpose", "aten::t", "aten::unsqueeze", "aten::_unsafe_view"),
}


class Path_:
    """One way of running a decode step on its own copy of the prefilled batch."""

    def __init__(self, label: str, model: Any, rows: int, positions: int, kind: str) -> None:
        import torch

        self.label, self.model, self.rows, self.kind = label, model, rows, kind
        ids = torch.randint(100, 2000, (rows, positions), generator=torch.Generator().manual_seed(0))
        mask = torch.ones((rows, positions), dtype=torch.long)
        with torch.inference_mode():
            if kind == "native":
                _, layers = model.forward(None, [None] * rows, model.embed.index_select(0, ids.flatten()).view(
                    rows, positions, -1), None, torch.arange(positions).expand(rows, -1))
                caches: Any = PlainCaches()
                cache = caches.of(layers)
            else:
                cache = new_cache(model.config)
                model(input_ids=ids, use_cache=True, **{forward._cache_kwarg(type(model)): cache})
                caches = TransformersCaches(model.config)
        self.state = BatchState(caches)
        self.state.extend(BatchState(caches, cache, mask, [positions] * rows))
        self.decoder = FastDecoder(model) if kind == "fast" else None
        self.times: list[float] = []

    def step(self) -> None:
        import torch

        mask, positions = self.state.step_inputs()
        tokens = [500] * self.rows
        with torch.inference_mode():
            if self.kind == "native":
                self.model.decode(self.state.cache, [None] * self.rows, tokens, mask, positions)
            elif self.decoder is not None:
                self.decoder(self.state.cache, [None] * self.rows, tokens, mask, positions)
            else:
                forward.call(self.model, self.state.cache, [None] * self.rows, input_ids=torch.tensor(tokens)[:, None],
                             attention_mask=mask, position_ids=positions)
        self.state.advance(mask)


def shares(path: Path_, steps: int) -> dict[str, float]:
    """Each group's share of the wall time of `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            path.step()
        wall = time.perf_counter() - started
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        group = next((g for g, names in GROUPS.items() if event.key in names), "other ops")
        totals[group] += event.self_cpu_time_total / 1e6
    totals["Python"] = max(0.0, wall - sum(totals.values()))
    return {group: seconds / wall for group, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--positions", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    reference = load_local_model(ModelSettings(), args.data_dir).model
    int8_settings = ModelSettings(quantize="int8")
    quantized = quantize_for_serving(load_local_model(int8_settings, args.data_dir), int8_settings, args.data_dir)
    native = load_native_model(ModelSettings(quantize="gguf"), args.data_dir).model
    label_kernels(native)
    lines = [f"Command: `.venv/bin/python bench/decode_profile.py --threads {args.threads} --rows {args.rows} "
             f"--positions {args.positions} --steps {args.steps}{' --record' if args.record else ''}` "
             f"(one decode step; {args.positions} cached positions per row)", "",
             "| rows | path | step, fastest | step, median | weights | attention | copies / KV | C ops | C layers "
             "| other ops | Python |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rows in (int(r) for r in args.rows.split(",")):
        paths = [Path_("transformers forward, float32 (reference)", reference, rows, args.positions, "forward"),
                 Path_(f"transformers fast decoder, {quantized.weights} (before)", quantized.model, rows,
                       args.positions, "fast"),
                 Path_(f"native engine, {native.weights} (now)", native, rows, args.positions, "native")]
        for _ in range(3):  # warm-up
            for path in paths:
                path.step()
        for _ in range(args.steps):
            for path in paths:
                started = time.perf_counter()
                path.step()
                path.times.append(time.perf_counter() - started)
        for path in paths:
            share = shares(path, max(5, args.steps // 4))
            cells = " | ".join(f"{share.get(g, 0.0) * 100:.0f}%" for g in
                               ("weights", "attention", "copies / KV", "C ops", "C layers", "other ops", "Python"))
            lines.append(f"| {rows} | {path.label} | {min(path.times) * 1000:.1f} ms | "
                         f"{statistics.median(path.times) * 1000:.1f} ms | {cells} |")
        for before in paths[:2]:
            after = paths[2]
            lines.append(f"| {rows} | **native vs {before.label.split(',')[0]}** | "
                         f"**{min(before.times) / min(after.times):.2f}×** | "
                         f"{statistics.median(before.times) / statistics.median(after.times):.2f}× (median) "
                         "| | | | | | | |")
    lines += ["", machine_line()]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record_section("Decode step profile: before / after", body)


def label_kernels(native: Any) -> None:
    """ctypes calls are invisible to the torch profiler: name them."""
    import torch

    def labelled(name: str, fn: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            with torch.profiler.record_function(name):
                return fn(*a, **k)
        return call

    w8kernel.W8Kernel.matmul = labelled("int8_matmul", w8kernel.W8Kernel.matmul)  # type: ignore[method-assign]
    qkernel.BlockKernel.matmul = labelled("block_matmul", qkernel.BlockKernel.matmul)  # type: ignore[method-assign]
    if native.ops is not None:
        for name in ("rms_norm", "add_rms_norm", "rope_store", "attend", "silu_mul"):
            setattr(native.ops, name, labelled("native_ops", getattr(native.ops, name)))
        native.ops.decode_layers = labelled("native_layers", native.ops.decode_layers)


if __name__ == "__main__":
    main()
