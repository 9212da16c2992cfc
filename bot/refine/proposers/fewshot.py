"""Few-shot selection: choose 👍 replies as the persona's examples, maximising the judge score.

Greedy forward selection (like DSPy's BootstrapFewShot with a metric): start from the persona's
examples, try adding each liked reply from the pool, keep the addition that scores best, and repeat
while the score improves, within `max_evaluations`. Examples come from the *train* split and are
scored on other train conversations (never their own), so the validation split the gate uses stays
unseen: a gate score on data the selection optimised would be biased upward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.domain.persona import Example, Persona
from bot.refine.candidates import Candidate, Change
from bot.refine.dataset import Dataset, ReplayItem
from bot.refine.evaluation import Scorer
from bot.refine.proposers import Attempt

log = logging.getLogger(__name__)

MAX_EXAMPLE_CHARS = 600


def example_pool(items: Sequence[ReplayItem], size: int) -> list[ReplayItem]:
    """The best-liked single-turn-worthy replies: net 👍 first, then more raters, then shorter."""
    seen: set[tuple[str, str]] = set()
    pool = []
    ranked = sorted(items, key=lambda i: (-(i.ups - i.downs), -i.weight, len(i.reply), i.reply_id))
    for item in ranked:
        key = (item.user_text.strip().lower(), item.reply.strip().lower())
        if not item.liked or key in seen or len(item.user_text) + len(item.reply) > MAX_EXAMPLE_CHARS:
            continue
        seen.add(key)
        pool.append(item)
        if len(pool) >= size:
            break
    return pool


class FewShotProposer:
    name = "few-shot"

    def __init__(self, scorer: Scorer, *, max_examples: int = 3, pool: int = 6, max_items: int = 8,
                 max_evaluations: int = 12, keep_ties: bool = False) -> None:
        #: Propose the best first example even when it only ties the current examples on the train
        #: conversations (a weak judge often cannot tell): the gate's held-out replay then decides.
        self.keep_ties = keep_ties
        self.scorer = scorer
        self.max_examples = max_examples
        self.pool_size = pool
        self.max_items = max_items
        self.max_evaluations = max_evaluations

    async def _score(self, persona: Persona, examples: tuple[Example, ...], items: Sequence[ReplayItem]) -> float:
        trial = persona.model_copy(update={"examples": examples})
        return (await self.scorer.score(trial, items)).mean

    async def propose(self, persona: Persona, dataset: Dataset, history: Sequence[Attempt]) -> list[Candidate]:
        pool = example_pool(dataset.train, self.pool_size)
        if not pool:
            log.info("few-shot: no liked replies in the train split of %s", persona.id)
            return []
        used = {i.conversation_id for i in pool}
        selection = [i for i in dataset.train if i.conversation_id not in used] or [
            i for i in dataset.train if i not in pool
        ]
        selection = sorted(selection, key=lambda i: (-i.weight, i.created_at))[: self.max_items]
        if not selection:
            log.info("few-shot: no train conversations left to score examples on for %s", persona.id)
            return []
        chosen: tuple[Example, ...] = persona.examples
        best = await self._score(persona, chosen, selection)
        baseline, evaluations = best, 1
        picked: list[ReplayItem] = []
        remaining = list(pool)
        while remaining and len(picked) < self.max_examples and evaluations < self.max_evaluations:
            trials = []
            for item in remaining:
                if evaluations >= self.max_evaluations:
                    break
                trial = (*chosen, Example(user=item.user_text, assistant=item.reply))
                trials.append((await self._score(persona, trial, selection), item, trial))
                evaluations += 1
            score, item, trial = max(trials, key=lambda t: t[0])
            if score < best or (score == best and (picked or not self.keep_ties)):
                break
            best, chosen = score, trial
            picked.append(item)
            remaining.remove(item)
        if not picked:
            return []
        data = {"dataset": dataset.fingerprint, "examples_from": [i.reply_id for i in picked],
                "scored_on": [i.reply_id for i in selection], "selection_score": [round(baseline, 4), round(best, 4)],
                "evaluations": evaluations}  # fmt: skip
        notes = f"{len(picked)} liked replies added as examples; selection score {baseline:.3f} -> {best:.3f}"
        return [Candidate.create(persona, Change(examples=chosen), self.name, data=data, notes=notes)]
