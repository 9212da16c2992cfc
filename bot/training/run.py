"""Train one adapter end to end: split, encode, measure, train, measure again, save with a card.

The output directory is a PEFT adapter (adapter_config.json + adapter_model.safetensors) that a
persona can reference right away (`adapter: adapters/NAME`), plus `adapter_card.json`: base
model, data sources and their sha256, steps, losses before/after on the training data and on a
held-out split, date and the command that made it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.adapters.spec import CARD_FILE, CONFIG_FILE, BaseModelInfo
from bot.domain.persona import Persona
from bot.models.local_loader import LoadedModel
from bot.training.data import ChatExample, DataSource, split_holdout, training_system_prompt, with_system
from bot.training.encoding import Encoded, batches, encode
from bot.training.errors import TrainingError
from bot.training.loop import LoopOptions, mean_loss, total_steps, train
from bot.training.methods import LoraOptions, SoftPromptOptions, lora_model, soft_prompt_model

CARD_FORMAT = 1
#: Training loss is measured on at most this many training examples (a forward pass is not free).
TRAIN_EVAL_EXAMPLES = 64


@dataclass(frozen=True)
class TrainingData:
    examples: list[ChatExample]
    sources: list[DataSource]
    holdout: float = 0.15
    seed: int = 0


@dataclass
class Progress:
    """Callbacks for a progress display: `start(total_steps)`, then `step(step, loss)` per step."""

    start: Callable[[int], None] = lambda total: None
    step: Callable[[int, float], None] = lambda step, loss: None
    phase: Callable[[str], None] = lambda text: None


@dataclass
class Losses:
    train_before: float
    held_out_before: float | None
    train_after: float = 0.0
    held_out_after: float | None = None
    train_eval_examples: int = 0

    @property
    def held_out_improved(self) -> bool | None:
        if self.held_out_before is None or self.held_out_after is None:
            return None
        return self.held_out_after < self.held_out_before


@dataclass
class TrainResult:
    out: Path
    card: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def check_output(out: Path) -> None:
    """Refuse to replace anything but an earlier adapter (or an empty directory)."""
    if out.exists() and not (out.is_dir() and ((out / CONFIG_FILE).exists() or not any(out.iterdir()))):
        raise TrainingError(f"{out} exists and is not an adapter directory; choose another --out")


def encode_all(tokenizer: Any, examples: list[ChatExample], max_length: int) -> list[Encoded]:
    return [e for e in (encode(tokenizer, ex, max_length) for ex in examples) if e is not None]


def train_adapter(
    loaded: LoadedModel,
    persona: Persona,
    data: TrainingData,
    method: SoftPromptOptions | LoraOptions,
    loop: LoopOptions,
    out: Path,
    *,
    command: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a soft prompt or LoRA adapter on `loaded` (which it wraps: use a model of your own)."""
    import torch

    progress = progress or Progress()
    check_output(out)
    system_prompt = training_system_prompt(persona)
    # Split before adding the system prompt: the same data splits the same way for every persona.
    train_raw, held_raw = split_holdout(data.examples, data.holdout, data.seed)
    train_examples, held_examples = with_system(train_raw, system_prompt), with_system(held_raw, system_prompt)
    tokenizer, pad_id = loaded.tokenizer, loaded.tokenizer.pad_token_id
    train_set = encode_all(tokenizer, train_examples, loop.max_length)
    held_set = encode_all(tokenizer, held_examples, loop.max_length)
    if not train_set:
        raise TrainingError("no training examples with an assistant reply (check --data / --from-feedback)")
    base = BaseModelInfo.of(loaded.model, loaded.name)
    torch.manual_seed(loop.seed)
    kind = "prompt" if isinstance(method, SoftPromptOptions) else "lora"
    model = soft_prompt_model(loaded, method) if isinstance(method, SoftPromptOptions) else lora_model(loaded, method)

    train_eval = batches(train_set[:TRAIN_EVAL_EXAMPLES], loop.batch_size, pad_id)
    held_eval = batches(held_set, loop.batch_size, pad_id)
    progress.phase("measuring the loss before training")
    losses = Losses(mean_loss(model, train_eval), mean_loss(model, held_eval) if held_eval else None)
    progress.start(total_steps(-(-len(train_set) // loop.batch_size), loop))
    started = time.perf_counter()
    steps = train(model, train_set, pad_id, loop, progress.step)
    seconds = time.perf_counter() - started
    progress.phase("measuring the loss after training")
    losses.train_after = mean_loss(model, train_eval)
    losses.held_out_after = mean_loss(model, held_eval) if held_eval else None
    losses.train_eval_examples = min(len(train_set), TRAIN_EVAL_EXAMPLES)

    card = {
        "format": CARD_FORMAT,
        "kind": kind,
        "persona": {"id": persona.id, "version": persona.version},
        "system_prompt_sha256": hashlib.sha256(system_prompt.encode()).hexdigest(),
        "base_model": base.to_dict(),
        "data": {
            "sources": [s.to_dict() for s in data.sources],
            "train_examples": len(train_set),
            "held_out_examples": len(held_set),
            "held_out_fraction": data.holdout,
            "split_seed": data.seed,
        },
        "method": method.describe(),
        "training": {**loop.describe(), "steps": steps, "seconds": round(seconds, 1)},
        "loss": {k: _round(v) for k, v in vars(losses).items()},
        "held_out_improved": losses.held_out_improved,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command or " ".join(["python -m bot", *sys.argv[1:]]),
        "versions": _versions(),
    }
    save_adapter(model, out, card)
    return TrainResult(out, card, _warnings(losses))


def _round(value: float | int | None) -> float | int | None:
    return round(value, 4) if isinstance(value, float) else value


def _warnings(losses: Losses) -> list[str]:
    if losses.held_out_improved is None:
        return ["no held-out examples: the adapter's effect on unseen chats was not measured"]
    if not losses.held_out_improved:
        return [
            f"training did NOT lower the held-out loss ({losses.held_out_before:.3f} -> "
            f"{losses.held_out_after:.3f}): the adapter memorised its data; try fewer epochs, a lower "
            "learning rate or more varied data"
        ]
    return []


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def save_adapter(model: Any, out: Path, card: dict[str, Any]) -> None:
    """Write PEFT files + card into a temporary sibling, then swap it in (an old adapter is replaced)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Embeddings are never trained here; "auto" would ask the Hugging Face hub about the base model.
    model.save_pretrained(str(tmp), save_embedding_layers=False)
    (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model-card template; ours is the JSON card
    (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
