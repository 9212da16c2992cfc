"""The judge assertion: ask a chat model a yes/no rubric question about a reply.

The judge sees the conversation, the reply and the question, and must answer YES or NO. The first
standalone "yes" or "no" in its answer is the verdict (small models often add an explanation);
an answer with neither is no verdict, and the assertion fails with the raw answer shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from bot.evals.cases import CaseMessage

JUDGE_SYSTEM = (
    "You are a strict evaluator of chatbot replies. Read the conversation and the reply, then answer "
    "the question about the reply with a single word: YES or NO."
)

_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Verdict:
    answer: bool | None  # None: the judge said neither yes nor no
    raw: str


def judge_messages(rubric: str, conversation: Sequence[CaseMessage], reply: str) -> list[BaseMessage]:
    transcript = "\n".join(f"{m.role.upper()}: {m.content}" for m in conversation)
    question = (
        f"Conversation:\n{transcript}\n\nReply to evaluate:\n{reply}\n\nQuestion: {rubric}\nAnswer YES or NO."
    )
    return [SystemMessage(content=JUDGE_SYSTEM), HumanMessage(content=question)]


def parse_verdict(text: str) -> bool | None:
    match = _VERDICT.search(text)
    return None if match is None else match.group(1).lower() == "yes"


async def ask_judge(
    model: BaseChatModel, rubric: str, conversation: Sequence[CaseMessage], reply: str
) -> Verdict:
    answer = await model.ainvoke(judge_messages(rubric, conversation, reply))
    raw = answer.content if isinstance(answer.content, str) else str(answer.content)
    return Verdict(parse_verdict(raw), raw.strip())
