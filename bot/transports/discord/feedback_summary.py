"""The /feedback summary of one persona: the feedback report's counters (cheap at any log size)."""

from __future__ import annotations

from bot.domain.persona import Persona
from bot.feedback.report import build_report
from bot.ports import FeedbackLog
from bot.refine.store import RefineStore


async def feedback_text(
    feedback: FeedbackLog, persona: Persona, *, refine: RefineStore | None = None, limit: int = 1900
) -> str:
    """What /feedback shows for `persona` (at most `limit` characters): its ratings, and for admins the
    running canary and the last refine step when `refine` is given."""
    report = await build_report(feedback, persona_id=persona.id, sample=0, refine=refine, journal=1)
    head = f"Ratings of **{persona.name}** (`{persona.id}`):\n"
    return head + report.discord_summary(limit=limit - len(head))
