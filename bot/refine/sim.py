"""A toy world in which the refinement loop can be measured: a model whose behaviour follows its
prompt, users with a hidden, known preference, a reflective optimiser and a judge that knows the
users' taste. Used by bench/refine_sim.py and the end-to-end tests (never by the bot itself).

- Behaviour is a set of traits (brief, example, question, emoji, ...). The model shows a trait when
  the system prompt carries its instruction, or when a few-shot example shows its marker (models
  imitate examples), each time with probability `follow` (a stable hash of the message decides).
- A user likes a reply with probability base + Σ weight(trait shown), clipped; the best reachable
  rate is the best trait set. After a reply they dislike, their next message names what bothered
  them ("too long", "skip the emoji", "an example please").
- The optimiser reads those complaints in the meta-prompt and edits the prompt's instructions.
- The judge prefers the reply its users would like more (ties: "A", a position bias the two-order
  judging turns into a tie).
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from langchain_core.messages import BaseMessage
from pydantic import Field

from bot.domain.persona import Persona
from bot.domain.variants import unit_hash
from bot.models.scripted import ScriptedChatModel, approx_token_count
from bot.ports import BoundModel


@dataclass(frozen=True)
class Trait:
    name: str
    instruction: str  # the sentence in a system prompt that asks for it
    marker: str  # what a reply showing it contains
    complaint: str  # what a user who wanted the opposite says next


TRAITS: dict[str, Trait] = {t.name: t for t in (
    Trait("brief", "Keep every reply under twenty words.", "(brief)", "way too long, keep it short"),
    Trait("example", "Always give one concrete example.", "For example,", "an example please"),
    Trait("question", "End with a question back to the user.", "What do you think?", "ask me what I think"),
    Trait("emoji", "Use plenty of emoji.", "🎉", "skip the emoji"),
    Trait("formal", "Write in a formal, ceremonious register.", "Kind regards.", "less stiff please"),
)}  # fmt: skip

LONG_TAIL = " It depends on many things, and there is a lot more one could say about all of it."


def traits_in(system_prompt: str, examples: Sequence[str] = ()) -> set[str]:
    shown = {t.name for t in TRAITS.values() if t.instruction.lower() in system_prompt.lower()}
    shown |= {t.name for t in TRAITS.values() for ex in examples if t.marker in ex}
    return shown


def render_reply(user_text: str, shown: set[str]) -> str:
    parts = [f"About {user_text.strip()[:40]!r}:"]
    if "formal" in shown:
        parts.append("Kind regards.")
    parts.append("here is my answer.")
    if "example" in shown:
        parts.append("For example, try it once.")
    if "emoji" in shown:
        parts.append("🎉")
    if "brief" in shown:
        parts.append("(brief)")
    else:
        parts.append(LONG_TAIL)
    if "question" in shown:
        parts.append("What do you think?")
    return " ".join(parts)


def shown_traits(reply: str) -> set[str]:
    shown = {t.name for t in TRAITS.values() if t.marker in reply}
    return shown


class PromptFollowingModel(ScriptedChatModel):
    """Replies show the traits its prompt asks for (each with probability `follow`)."""

    follow: float = 0.9

    def _reply_for(self, messages: list[BaseMessage]) -> str:
        self.calls += 1
        system = str(messages[0].content) if messages and messages[0].type == "system" else ""
        examples = [str(m.content) for m in messages[1:-1] if m.type == "ai"]
        last = str(messages[-1].content) if messages else ""
        wanted = traits_in(system, examples)
        shown = {t for t in wanted if unit_hash(last, t, str(len(messages))) < self.follow}
        return render_reply(last, shown)


class SimProvider:
    """A ModelProvider serving every persona with the prompt-following model."""

    def __init__(self, follow: float = 0.9) -> None:
        self.model = PromptFollowingModel(follow=follow)

    def bind(self, persona: Persona) -> BoundModel:
        return BoundModel(self.model, "scripted", "sim", persona.adapter, 4096, approx_token_count)


@dataclass
class Users:
    """Simulated users: P(👍 | reply) = base + Σ weights of the traits it shows, within [0.02, 0.98]."""

    weights: Mapping[str, float] = field(default_factory=lambda: {
        "brief": 0.22, "example": 0.14, "question": 0.06, "emoji": -0.18, "formal": -0.12,
    })  # fmt: skip
    base: float = 0.42

    def like_probability(self, reply: str) -> float:
        p = self.base + sum(self.weights.get(t, 0.0) for t in shown_traits(reply))
        return min(0.98, max(0.02, p))

    def best_rate(self, follow: float = 0.9) -> float:
        """The best 👍 rate any prompt can reach (over every trait set, with the model's `follow`)."""
        best = 0.0
        names = list(TRAITS)
        for size in range(len(names) + 1):
            for wanted in itertools.combinations(names, size):
                best = max(best, self.expected_rate(set(wanted), follow))
        return best

    def expected_rate(self, wanted: set[str], follow: float = 0.9) -> float:
        total = 0.0
        wanted_list = sorted(wanted)
        for shown_bits in itertools.product((0, 1), repeat=len(wanted_list)):
            shown = {t for t, b in zip(wanted_list, shown_bits, strict=True) if b}
            prob = 1.0
            for b in shown_bits:
                prob *= follow if b else 1 - follow
            total += prob * self.like_probability(render_reply("x", shown))
        return total

    def rate(self, reply: str, rng: random.Random) -> int:
        return 1 if rng.random() < self.like_probability(reply) else -1

    def complaint(self, reply: str) -> str:
        """The user's next message after a reply they disliked: the biggest problem they see."""
        shown = shown_traits(reply)
        problems = [(-w, TRAITS[t].complaint) for t, w in self.weights.items() if w < 0 and t in shown]
        problems += [(w, TRAITS[t].complaint) for t, w in self.weights.items() if w > 0 and t not in shown]
        if not problems:
            return "hm, ok. Anyway, next question"
        return max(problems)[1]


class ReflectiveOptimizer(ScriptedChatModel):
    """A scripted optimiser: maps the complaints in the meta-prompt to instruction edits."""

    def _reply_for(self, messages: list[BaseMessage]) -> str:
        self.calls += 1
        text = str(messages[-1].content)
        current = re.search(r"Current system prompt:\n<prompt>\n(.*?)\n</prompt>", text, re.DOTALL)
        prompt = current.group(1) if current else ""
        complaints = Counter(re.findall(r"The user's next message: (.*)", text))
        edits: list[str] = []
        for said, _ in complaints.most_common():
            for trait in TRAITS.values():
                if trait.complaint == said.strip() and trait.name not in edits:
                    edits.append(trait.name)
        proposals = []
        for take in (1, 2, 3):
            new = prompt
            for name in edits[:take]:
                trait = TRAITS[name]
                if trait.instruction in new:
                    new = new.replace(trait.instruction, "").strip()  # they complained about it: drop it
                else:
                    new = f"{new} {trait.instruction}".strip()
            if new and new != prompt and new not in proposals:
                proposals.append(new)
        return "\n".join(f"<prompt>\n{p}\n</prompt>" for p in proposals) or "I have no better idea."


class TasteJudge(ScriptedChatModel):
    """Answers "A" or "B": the reply the simulated users like more ("A" on a tie)."""

    users: Users = Field(default_factory=Users)

    def _reply_for(self, messages: list[BaseMessage]) -> str:
        self.calls += 1
        text = str(messages[-1].content)
        match = re.search(r"Reply A:\n(.*?)\n\nReply B:\n(.*?)\n\nWhich reply", text, re.DOTALL)
        if match is None:
            return "A"
        a, b = (self.users.like_probability(r) for r in match.groups())
        return "B" if b > a else "A"
