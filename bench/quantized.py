"""int8 weights vs the float32 reference: held-out loss of the shipped personas, and greedy agreement.

    .venv/bin/python bench/quantized.py [--record]

Held-out loss is computed exactly as bench/adapters_compare.py does (the chats held out of the
captain adapters' training, each in the persona's own prompt, through the serving inputs), once on the
float32 model and once with `quantize_for_serving` (BOT_MODEL__QUANTIZE=int8): hard prompt, soft
prompt and LoRA (applied on top of the int8 base). The rule (issue #14): int8 may be the default only
if every persona's held-out loss rises by at most 2% and the shipped eval suites still pass
(`python -m bot eval`, run separately with each setting; see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.adapters_compare import Variant, card_of, held_out_chats, reply_loss  # noqa: E402
from bench.common import machine_line, record_section  # noqa: E402
from bot.models.local import LocalRuntime  # noqa: E402
from bot.models.local_loader import load_local_model, quantize_for_serving  # noqa: E402
from bot.personas.loader import load_directory  # noqa: E402
from bot.settings import ModelSettings, Settings  # noqa: E402
from bot.training.data import ChatExample  # noqa: E402


def mean_loss(runtime: LocalRuntime, variant: Variant, chats: list[ChatExample]) -> float:
    parts = [reply_loss(runtime, variant, chat) for chat in chats]
    return sum(loss for loss, _ in parts) / sum(n for _, n in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("training_data/captain.jsonl"))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    data_dir = args.data_dir or settings.data_dir
    personas = load_directory(settings.personas_dir).personas
    variants = [Variant("hard prompt (captain)", personas["captain"], None),
                Variant("soft prompt (captain-soft)", personas["captain-soft"], personas["captain-soft"].adapter),
                Variant("LoRA (captain-lora)", personas["captain-lora"], personas["captain-lora"].adapter)]
    card = card_of(variants[2])
    assert card is not None
    chats = held_out_chats(args.data, card)
    results: dict[str, list[float]] = {}
    for kind in ("none", "int8"):
        model_settings = ModelSettings(quantize=kind)
        loaded = quantize_for_serving(load_local_model(model_settings, data_dir), model_settings, data_dir)
        if (loaded.weights == "int8") != (kind == "int8"):
            sys.exit("the int8 kernel could not be built here (no C compiler or no AVX2): nothing to compare")
        runtime = LocalRuntime(loaded, model_settings)
        results[loaded.weights] = [mean_loss(runtime, v, chats) for v in variants]
        runtime.close()
        print(loaded.weights, results[loaded.weights], flush=True)
    lines = [f"Command: `.venv/bin/python bench/quantized.py{' --record' if args.record else ''}` "
             f"({len(chats)} held-out chats; cross-entropy per reply token; rule: int8 ≤ +2%)", "",
             "| persona | float32 | int8 | change | within 2% |", "|---|---:|---:|---:|---|"]
    worst = 0.0
    for i, variant in enumerate(variants):
        reference, quantized = results["float32"][i], results["int8"][i]
        change = (quantized - reference) / reference
        worst = max(worst, change)
        lines.append(f"| {variant.label} | {reference:.4f} | {quantized:.4f} | {change * 100:+.2f}% | "
                     f"{'yes' if change <= 0.02 else 'NO'} |")
    lines += ["", f"Largest rise: {worst * 100:+.2f}% (limit +2%).", "", machine_line()]
    body = "\n".join(lines) + "\n"
    print(body)
    if args.record:
        record_section("int8 weights vs float32: held-out loss of the shipped personas", body)


if __name__ == "__main__":
    main()
