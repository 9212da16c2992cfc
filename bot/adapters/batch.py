"""Build generate() inputs for a batch whose rows may each use a different adapter.

Every row enters as embeddings, left-padded:

    [padding][soft prompt, if the row has one][token embeddings of the chat prompt]

and, once any LoRA is loaded, `adapter_names` names each row's LoRA ("__base__" for base and
soft-prompt rows). Measured on transformers 5.24 / peft 0.21: such a mixed batch gives, row for
row, the same greedy tokens as each row run alone. With `inputs_embeds` and no `input_ids`,
generate() returns only the new tokens.

All rows go in as embeddings, even plain ones, so a persona's output never depends on which
other rows share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.adapters.bank import BASE, AdapterBank, LoadedAdapter


@dataclass(frozen=True)
class Row:
    input_ids: Sequence[int]
    adapter: LoadedAdapter | None = None

    @property
    def prompt_tokens(self) -> int:
        """Positions the model reads for this row: the chat tokens plus any virtual tokens."""
        return len(self.input_ids) + (self.adapter.virtual_tokens if self.adapter else 0)


def _row_embeddings(embed: Any, row: Row) -> Any:
    import torch

    tokens = embed(torch.tensor(list(row.input_ids), dtype=torch.long))
    if row.adapter is not None and row.adapter.prompt is not None:
        tokens = torch.cat([row.adapter.prompt, tokens])
    return tokens


def build_batch(bank: AdapterBank, rows: Sequence[Row]) -> dict[str, Any]:
    """kwargs for `bank.generator.generate(**kwargs, ...)` (call it under torch.inference_mode())."""
    import torch

    if not rows:
        raise ValueError("a batch needs at least one row")
    embed = bank.base_model.get_input_embeddings()
    embed = getattr(embed, "base_layer", embed)  # never a LoRA-wrapped embedding (see spec checks)
    pieces = [_row_embeddings(embed, row) for row in rows]
    width = max(p.shape[0] for p in pieces)
    hidden = pieces[0].shape[1]
    inputs = torch.zeros((len(rows), width, hidden), dtype=pieces[0].dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, piece in enumerate(pieces):
        inputs[i, width - piece.shape[0] :] = piece
        mask[i, width - piece.shape[0] :] = 1
    kwargs: dict[str, Any] = {"inputs_embeds": inputs, "attention_mask": mask}
    if bank.has_lora:
        kwargs["adapter_names"] = [
            row.adapter.name if row.adapter is not None and row.adapter.kind == "lora" else BASE for row in rows
        ]
    return kwargs
