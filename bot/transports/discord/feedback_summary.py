"""The /feedback summary of one persona: the feedback report's numbers when the log is the Redis
one (counters, cheap at any size), else a count over its rated replies (👍, 👎, 👍 rate)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.persona import Persona
from bot.feedback.redis_log import RedisFeedbackLog
from bot.feedback.report import build_report
from bot.ports import FeedbackLog


@dataclass(frozen=True, slots=True)
class RatingSummary:
    rated_replies: int = 0
    ups: int = 0
    downs: int = 0

    @property
    def up_rate(self) -> float | None:
        total = self.ups + self.downs
        return self.ups / total if total else None

    def render(self, persona: Persona) -> str:
        head = f"Ratings of **{persona.name}** (`{persona.id}`)"
        if self.up_rate is None:
            return f"{head}: no ratings yet. React with 👍 or 👎 on a reply to rate it."
        return (
            f"{head}: 👍 {self.ups} · 👎 {self.downs} · {self.up_rate:.0%} positive "
            f"({self.rated_replies} rated {'reply' if self.rated_replies == 1 else 'replies'})"
        )


async def summarize(feedback: FeedbackLog, persona_id: str) -> RatingSummary:
    replies = ups = downs = 0
    async for rated in feedback.iter_rated(persona_id):
        replies += 1
        ups += rated.ups
        downs += rated.downs
    return RatingSummary(replies, ups, downs)


async def feedback_text(feedback: FeedbackLog, persona: Persona, *, limit: int = 1900) -> str:
    """What /feedback shows for `persona` (at most `limit` characters)."""
    if isinstance(feedback, RedisFeedbackLog):
        report = await build_report(feedback, persona_id=persona.id, sample=0)
        head = f"Ratings of **{persona.name}** (`{persona.id}`):\n"
        return head + report.discord_summary(limit=limit - len(head))
    return (await summarize(feedback, persona.id)).render(persona)[:limit]
