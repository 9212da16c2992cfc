"""Where a decode step's time goes: transformers' forward (before) vs the fast decoder, float32 and int8.

    .venv/bin/python bench/decode_profile.py [--threads 1] [--rows 1,8] [--steps 20] [--record]

One prefilled batch (--positions tokens per row) is advanced step by step through each path, the
paths taking turns (one step each, round robin) so a busy neighbour slows all alike. Reports the
fastest and the median step, and each part's share of the step (torch profiler, self time by op,
grouped): weight matrix multiplies (MKL sgemm/gemv, or the int8 kernel), attention, copies and KV
bookkeeping (cat/copy/index/slice), the rest of the ATen ops (norms, rotary, activations, adds), and
Python (wall time not spent inside any op: module calls, argument handling, bookkeeping).
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
from bot.models import w8kernel  # noqa: E402
from bot.models.batching import forward  # noqa: E402
from bot.models.batching.decode import FastDecoder  # noqa: E402
from bot.models.batching.kv import BatchState, new_cache  # noqa: E402
from bot.models.local_loader import load_local_model, quantize_for_serving  # noqa: E402
from bot.settings import ModelSettings  # noqa: E402

GROUPS = {
    "weights": ("aten::mm", "aten::addmm", "aten::linear", "int8_matmul"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax",
                  "aten::matmul"),
    "copies / KV": ("aten::cat", "aten::copy_", "aten::index_select", "aten::slice", "aten::narrow",
                    "aten::empty", "aten::empty_strided", "aten::as_strided", "aten::_to_copy", "aten::to",
                    "aten::clone", "aten::contiguous", "aten::select", "aten::view", "aten::reshape",
                    "aten::expand", "aten::transpose", "aten::t", "aten::unsqueeze", "aten::_unsafe_view"),
}


class Path_:
    """One way of running a decode step on its own copy of the prefilled batch."""

    def __init__(self, label: str, model: Any, rows: int, positions: int, fast: bool) -> None:
        import torch

        self.label, self.model, self.rows = label, model, rows
        ids = torch.randint(100, 2000, (rows, positions), generator=torch.Generator().manual_seed(0))
        cache = new_cache(model.config)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=True, **{forward._cache_kwarg(type(model)): cache})
        self.state = BatchState(model.config)
        self.state.extend(BatchState(model.config, cache, torch.ones((rows, positions), dtype=torch.long),
                                     [positions] * rows))
        self.decoder = FastDecoder(model) if fast else None
        self.times: list[float] = []

    def step(self) -> None:
        import torch

        mask, positions = self.state.step_inputs()
        tokens = [500] * self.rows
        with torch.inference_mode():
            if self.decoder is not None:
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
    original = w8kernel.W8Kernel.matmul

    def labelled(self: w8kernel.W8Kernel, *a: Any, **k: Any) -> Any:
        with torch.profiler.record_function("int8_matmul"):  # the ctypes call is invisible to the profiler
            return original(self, *a, **k)

    w8kernel.W8Kernel.matmul = labelled  # type: ignore[method-assign]
    lines = [f"Command: `.venv/bin/python bench/decode_profile.py --threads {args.threads} --rows {args.rows} "
             f"--positions {args.positions} --steps {args.steps}{' --record' if args.record else ''}` "
             f"(one decode step; {args.positions} cached positions per row)", "",
             "| rows | path | step, fastest | step, median | weights | attention | copies / KV | other ops | Python |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rows in (int(r) for r in args.rows.split(",")):
        paths = [Path_("transformers forward, float32 (before)", reference, rows, args.positions, fast=False),
                 Path_("fast decoder, float32", reference, rows, args.positions, fast=True),
                 Path_(f"fast decoder, {quantized.weights}", quantized.model, rows, args.positions, fast=True)]
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
                               ("weights", "attention", "copies / KV", "other ops", "Python"))
            lines.append(f"| {rows} | {path.label} | {min(path.times) * 1000:.1f} ms | "
                         f"{statistics.median(path.times) * 1000:.1f} ms | {cells} |")
        before, after = paths[0], paths[2]
        lines.append(f"| {rows} | **speed-up, fastest step** | **{min(before.times) / min(after.times):.2f}×** | "
                     f"{statistics.median(before.times) / statistics.median(after.times):.2f}× (median) | | | | | |")
    lines += ["", machine_line()]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record_section("Decode step profile: before / after", body)


if __name__ == "__main__":
    main()
