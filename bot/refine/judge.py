"""Pairwise judging: is a new reply better than the rated one, for the same conversation?

The judge reads the conversation and two replies, A and B, and names the better one with one
letter. Each pair is judged twice with the positions swapped, so a judge that always says "A"
(position bias, common in small models) scores a tie, not a win.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from bot.domain.messages import ChatMessage

PAIR_SYSTEM = (
    "You compare two replies of a chat assistant to the same conversation. Decide which reply the user "
    "would prefer: more helpful, more in character, better written. Answer with a single letter: A or B."
)

_LETTER = re.compile(r"\b([AB])\b")


@dataclass(frozen=True, slots=True)
class Preference:
    """How often the new reply won over the reference: 1 (both orders), 0.5 (split or no verdict), 0."""

    wins: float
    verdicts: int  # how many of the two judgements named a letter


def pair_messages(conversation: Sequence[ChatMessage], a: str, b: str) -> list[BaseMessage]:
    transcript = "\n".join(f"{m.role.upper()}: {m.content}" for m in conversation)
    question = (
        f"Conversation:\n{transcript}\n\nReply A:\n{a}\n\nReply B:\n{b}\n\n"
        "Which reply is better, A or B? Answer with one letter."
    )
    return [SystemMessage(content=PAIR_SYSTEM), HumanMessage(content=question)]


def parse_letter(text: str) -> str | None:
    match = _LETTER.search(text.strip())
    return None if match is None else match.group(1)


async def _ask(judge: BaseChatModel, conversation: Sequence[ChatMessage], a: str, b: str) -> str | None:
    answer = await judge.ainvoke(pair_messages(conversation, a, b))
    return parse_letter(answer.content if isinstance(answer.content, str) else str(answer.content))


async def prefer(judge: BaseChatModel, conversation: Sequence[ChatMessage], new: str, reference: str) -> Preference:
    """Judge `new` against `reference` in both positions. Identical replies tie without a call."""
    if new.strip() == reference.strip():
        return Preference(0.5, 0)
    first = await _ask(judge, conversation, new, reference)  # new is A
    second = await _ask(judge, conversation, reference, new)  # new is B
    votes = [v for v in ((first == "A") if first else None, (second == "B") if second else None) if v is not None]
    if not votes:
        return Preference(0.5, 0)
    # One order unanswered: half the evidence, pulled toward a tie.
    wins = sum(votes) / 2 if len(votes) == 2 else (0.75 if votes[0] else 0.25)
    return Preference(wins, len(votes))


def item_score(preference: Preference, ups: int, downs: int) -> float:
    """A replayed reply's score in [0, 1] against the rated one, weighted by its raters: for each 👎
    it must be better (its win rate), for each 👍 not worse (1 unless it lost both judgements;
    a split counts as not worse). Conflicting ratings count both ways."""
    raters = ups + downs
    if raters == 0:
        return 0.5
    not_worse = 1.0 if preference.wins >= 0.5 else preference.wins * 2
    return (ups * not_worse + downs * preference.wins) / raters
