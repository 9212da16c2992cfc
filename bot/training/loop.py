"""A small CPU training loop: AdamW on the adapter's parameters, token-weighted losses."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.training.encoding import IGNORE, Encoded, batches


@dataclass(frozen=True)
class LoopOptions:
    epochs: int = 3
    lr: float = 3e-2
    batch_size: int = 8
    #: Stop after this many optimizer steps (None: all epochs).
    max_steps: int | None = None
    seed: int = 0
    max_length: int = 384

    def describe(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_steps": self.max_steps,
            "seed": self.seed,
            "max_length": self.max_length,
            "optimizer": "AdamW, cosine decay, grad clip 1.0",
        }


def mean_loss(model: Any, batches: Sequence[dict[str, Any]]) -> float:
    """Cross-entropy per trained token over all batches (not a mean of batch means)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            count = int((batch["labels"] != IGNORE).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    return total / max(tokens, 1)


def total_steps(batches_per_epoch: int, options: LoopOptions) -> int:
    steps = batches_per_epoch * options.epochs
    return steps if options.max_steps is None else min(steps, options.max_steps)


def train(
    model: Any,
    examples: Sequence[Encoded],
    pad_id: int,
    options: LoopOptions,
    on_step: Callable[[int, float], None] | None = None,
) -> int:
    """Train the model's trainable parameters; `on_step(step, loss)` after each step. Returns steps run."""
    import torch

    torch.manual_seed(options.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    steps = total_steps(math.ceil(len(examples) / options.batch_size), options)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    )
    model.train()
    step = 0
    for epoch in range(options.epochs):
        for batch in batches(examples, options.batch_size, pad_id, shuffle_seed=options.seed + epoch):
            if step >= steps:
                return step
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
    return step
