"""Proposers: pluggable sources of candidates. One small protocol, like DSPy's optimizers as objects:

    class Proposer(Protocol):
        name: str
        async def propose(self, persona, dataset, history) -> list[Candidate]

`history` holds earlier candidates of this persona with their gate scores and live outcome, newest
last, so proposers that learn (the instruction rewriter) can build on what was already tried.

- `FewShotProposer` ("few-shot"): picks 👍 replies as few-shot examples by greedy forward selection
  on the judge score; needs no optimiser model (works with the bundled local model).
- `RewriteProposer` ("rewrite"): an optimiser model reflects on 👎 replies, the user's next message
  and test failures, and rewrites the system prompt (GEPA/OPRO-style, with the scored history).
- `AdapterProposer` ("soft-prompt" / "lora"): trains an adapter on 👍 replies with bot.training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from bot.domain.persona import Persona
from bot.refine.candidates import Candidate
from bot.refine.dataset import Dataset


@dataclass(frozen=True)
class Attempt:
    """One earlier candidate: what it changed and how it scored (gate lift; live outcome if any)."""

    candidate: str
    proposer: str
    parent_version: str
    system_prompt: str | None
    examples: int | None
    lift: float | None
    passed: bool
    outcome: str = ""  # "", "promoted", "rolled back", "inconclusive"
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attempt:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Proposer(Protocol):
    name: str

    async def propose(self, persona: Persona, dataset: Dataset, history: Sequence[Attempt]) -> list[Candidate]: ...


__all__ = ["Attempt", "Proposer"]
