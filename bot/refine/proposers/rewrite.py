"""Instruction rewrite: an optimiser model reflects on what went wrong and rewrites the system prompt.

GEPA-style reflection on text feedback (the 👎 replies, what the user said next — often the
clearest criticism there is — and failed test cases with their reasons), plus OPRO-style memory:
earlier candidates with their scores, worst to best, so a later proposal learns from earlier ones.
The optimiser answers with each new prompt between <prompt> and </prompt>. An answer that is
empty, unreachable, too long or holds no valid prompt (broken braces, unknown variables) raises
OptimizerError; proposing never writes anything, so a bad answer changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from bot.domain.persona import PROMPT_VARIABLES, Persona, check_template
from bot.errors import PersonaError
from bot.refine.candidates import Candidate, Change
from bot.refine.dataset import Dataset, ReplayItem
from bot.refine.errors import OptimizerError
from bot.refine.proposers import Attempt

OPTIMIZER_SYSTEM = (
    "You are an expert prompt engineer. You improve the system prompt of a chat persona using its users' "
    "ratings. You answer only with new system prompts, each between <prompt> and </prompt>."
)
_BLOCK = re.compile(r"<prompt>(.*?)</prompt>", re.DOTALL | re.IGNORECASE)
#: An answer longer than this is refused outright (a runaway generation, not a prompt).
MAX_ANSWER_CHARS = 100_000

FailureSource = Callable[[], Awaitable[list[str]]]


def _clip(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _exchange(item: ReplayItem, with_next: bool) -> str:
    lines = [f"User: {_clip(item.user_text)}", f"Reply: {_clip(item.reply)}"]
    lines.append(f"Ratings: {item.ups} up, {item.downs} down")
    if with_next and item.next_user:
        lines.append(f"The user's next message: {_clip(item.next_user)}")
    return "\n".join(lines)


def meta_prompt(persona: Persona, dataset: Dataset, history: Sequence[Attempt], failures: Sequence[str], *,
                count: int, max_chars: int, shown: int = 8) -> str:
    """The optimiser's instructions: current prompt, feedback, test failures, scored history."""
    disliked = sorted((i for i in dataset.train if i.downs), key=lambda i: (-(i.downs - i.ups), -i.weight))[:shown]
    liked = sorted((i for i in dataset.train if i.liked), key=lambda i: -i.ups)[: max(2, shown // 2)]
    parts = [f"Persona: {persona.name} ({persona.description or 'no description'})",
             f"Current system prompt:\n<prompt>\n{persona.system_prompt.strip()}\n</prompt>"]
    if disliked:
        parts.append("Replies users DISLIKED (fix what caused these):\n\n"
                     + "\n\n".join(f"{n}. " + _exchange(i, True) for n, i in enumerate(disliked, 1)))
    if liked:
        parts.append("Replies users LIKED (keep what made these work):\n\n"
                     + "\n\n".join(f"{n}. " + _exchange(i, False) for n, i in enumerate(liked, 1)))
    if failures:
        parts.append("Failed test cases:\n" + "\n".join(f"- {_clip(f, 300)}" for f in failures[:shown]))
    scored = [a for a in history if a.system_prompt and a.lift is not None]
    if scored:
        ordered = sorted(scored, key=lambda a: a.lift or 0.0)[-shown:]
        parts.append("Earlier candidate prompts with their score (judge lift over the prompt they replaced; "
                     "worst first, best last; outcome online where known):\n\n" + "\n\n".join(
                         f"score {a.lift:+.3f}{' (' + a.outcome + ')' if a.outcome else ''}:\n"
                         f"<prompt>\n{a.system_prompt}\n</prompt>" for a in ordered))
    variables = ", ".join("{" + v + "}" for v in sorted(PROMPT_VARIABLES))
    parts.append(
        f"Write {count} improved system prompt(s) for this persona that avoid what users disliked and keep "
        f"what they liked. Each must differ from the prompts above and be under {max_chars} characters. "
        f"You may use these variables in braces: {variables}; write any other literal brace as {{{{ or }}}}. "
        "Put each prompt between <prompt> and </prompt>, with nothing else."
    )
    return "\n\n".join(parts)


def parse_prompts(answer: str, current: str, max_chars: int) -> tuple[list[str], list[str]]:
    """(valid prompts, reasons the others were refused) from the optimiser's answer."""
    valid: list[str] = []
    refused: list[str] = []
    for block in _BLOCK.findall(answer):
        text = block.strip()
        if not text:
            refused.append("an empty prompt")
        elif len(text) > max_chars:
            refused.append(f"a prompt of {len(text)} characters (limit {max_chars})")
        elif text == current.strip() or text in valid:
            refused.append("a prompt identical to the current one or to another proposal")
        else:
            try:
                check_template(text)
            except ValueError as exc:
                refused.append(f"a broken template: {exc}")
                continue
            valid.append(text)
    return valid, refused


class RewriteProposer:
    name = "rewrite"

    def __init__(self, optimizer: BaseChatModel, *, candidates: int = 2, max_prompt_chars: int = 4000,
                 failures: FailureSource | None = None, label: str = "optimiser") -> None:
        self.optimizer = optimizer
        self.count = candidates
        self.max_chars = max_prompt_chars
        self.failures = failures
        self.label = label

    async def _ask(self, prompt: str) -> str:
        try:
            messages = [SystemMessage(content=OPTIMIZER_SYSTEM), HumanMessage(content=prompt)]
            answer = await self.optimizer.ainvoke(messages)
        except Exception as exc:  # unreachable server, timeout, refused request: one clear error
            raise OptimizerError(f"{self.label} failed: {type(exc).__name__}: {exc}") from exc
        text = answer.content if isinstance(answer.content, str) else str(answer.content)
        if not text.strip():
            raise OptimizerError(f"{self.label} gave an empty answer")
        if len(text) > MAX_ANSWER_CHARS:
            raise OptimizerError(f"{self.label} gave a {len(text)}-character answer (limit {MAX_ANSWER_CHARS})",
                                 raw=text)
        return text

    async def propose(self, persona: Persona, dataset: Dataset, history: Sequence[Attempt]) -> list[Candidate]:
        failures = await self.failures() if self.failures else []
        prompt = meta_prompt(persona, dataset, history, failures, count=self.count, max_chars=self.max_chars)
        answer = await self._ask(prompt)
        prompts, refused = parse_prompts(answer, persona.system_prompt, self.max_chars)
        if not prompts:
            why = "; ".join(refused) if refused else "no <prompt>…</prompt> block"
            raise OptimizerError(f"{self.label} proposed no usable system prompt ({why})", raw=answer)
        data = {"dataset": dataset.fingerprint, "disliked": sum(1 for i in dataset.train if i.downs),
                "next_messages": sum(1 for i in dataset.train if i.downs and i.next_user),
                "test_failures": len(failures), "history": len(history)}  # fmt: skip
        out = []
        for text in prompts[: self.count]:
            try:
                out.append(Candidate.create(persona, Change(system_prompt=text), self.name, data=data,
                                            notes="; ".join(f"refused {r}" for r in refused)))
            except PersonaError as exc:
                refused.append(str(exc))
        if not out:
            raise OptimizerError(f"{self.label} proposed no valid persona ({'; '.join(refused)})", raw=answer)
        return out
