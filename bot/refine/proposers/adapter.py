"""Adapter retraining: a soft prompt or LoRA adapter trained on the persona's 👍 replies.

Uses the existing trainers (bot.training) on a fresh copy of the local model, in a worker thread.
Each liked reply of the train split is one chat: its remembered turns and message as untrained
context, the reply as the target. The trainers are supervised fine-tuning, so 👎 replies are not
used (a preference method such as DPO would be needed; `feedback export --format dpo` has them).
The adapter is written under `adapters_dir` and the candidate points the persona at it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from bot.domain.messages import ChatMessage
from bot.domain.persona import Persona
from bot.models.local_loader import LoadedModel
from bot.refine.candidates import Candidate, Change
from bot.refine.dataset import Dataset
from bot.refine.errors import NotEnoughData
from bot.refine.proposers import Attempt
from bot.training.data import ChatExample, source_of
from bot.training.loop import LoopOptions
from bot.training.methods import LoraOptions, SoftPromptOptions
from bot.training.run import TrainingData, train_adapter

log = logging.getLogger(__name__)

AdapterKind = Literal["soft-prompt", "lora"]


def liked_chats(dataset: Dataset, name: str) -> list[ChatExample]:
    out = []
    for item in dataset.train:
        if not item.liked:
            continue
        context = (*item.history, ChatMessage("user", item.user_text))
        out.append(ChatExample((*context, ChatMessage("assistant", item.reply)), name, context=len(context)))
    return out


class AdapterProposer:
    def __init__(self, load_model: Callable[[], LoadedModel], adapters_dir: Path, *, kind: AdapterKind = "soft-prompt",
                 loop: LoopOptions | None = None, min_examples: int = 4) -> None:
        self.name = kind
        self.kind = kind
        self.load_model = load_model
        self.adapters_dir = adapters_dir
        self.loop = loop or LoopOptions(epochs=3, lr=3e-2 if kind == "soft-prompt" else 2e-3, batch_size=4,
                                        max_steps=None, seed=0, max_length=384)
        self.min_examples = min_examples

    async def propose(self, persona: Persona, dataset: Dataset, history: Sequence[Attempt]) -> list[Candidate]:
        chats = liked_chats(dataset, f"refine:{persona.id}:{dataset.fingerprint}")
        if len(chats) < self.min_examples:
            raise NotEnoughData(f"adapter training needs at least {self.min_examples} liked replies in the train "
                                f"split of {persona.id} v{persona.version}; it has {len(chats)}",
                                needed="liked replies")
        out = self.adapters_dir / f"{persona.id}-{self.kind}-{dataset.fingerprint[:8]}"
        method: SoftPromptOptions | LoraOptions = (
            SoftPromptOptions(16, persona.system_prompt) if self.kind == "soft-prompt" else LoraOptions()
        )
        data = TrainingData(chats, [source_of(chats[0].source, chats)], holdout=0.15, seed=self.loop.seed)

        def train() -> dict[str, object]:
            return train_adapter(self.load_model(), persona, data, method, self.loop, out,
                                 command=f"python -m bot refine propose {persona.id} --proposer {self.kind}").card

        card = await asyncio.to_thread(train)
        notes = f"trained on {len(chats)} liked replies; loss {card.get('loss')}"
        provenance = {"dataset": dataset.fingerprint, "examples": len(chats), "adapter": str(out),
                      "held_out_improved": card.get("held_out_improved")}
        return [Candidate.create(persona, Change(adapter=str(out)), self.name, data=provenance, notes=notes)]
