"""What a user sees while their message waits in line, and when it is given up (always with why)."""

from __future__ import annotations

import math

WAITING = "-# Lots of messages right now: yours is in line, and I'll answer here in {about}."
WAITED_TOO_LONG = (
    "-# Sorry, I couldn't get to this message: it waited more than {limit} behind others. Please ask again."
)
TOO_BUSY = (
    "-# Sorry, I'm too busy to answer this: it would wait {about}, longer than the {limit} I allow. "
    "Please ask again later."
)
TOO_FAST = (
    "-# You're sending messages faster than I answer them (one every {cooldown}), so I'm skipping this one. "
    "Please send it again in a bit."
)

WITHOUT_MEMORY = "-# (My memory is unavailable right now, so I answered without our earlier conversation.)"

SHUTTING_DOWN = "-# Sorry, I'm restarting and couldn't answer this. Please send it again in a minute."


def duration(seconds: float) -> str:
    """A rough, readable duration: "a few seconds", "about 40 seconds", "about 3 minutes"."""
    if seconds < 10:
        return "a few seconds"
    if seconds < 60:
        return f"about {math.ceil(seconds / 10) * 10} seconds"
    if seconds < 3600:
        minutes = math.ceil(seconds / 60)
        return f"about {minutes} minute{'s' if minutes > 1 else ''}"
    hours = math.ceil(seconds / 3600)
    return f"about {hours} hour{'s' if hours > 1 else ''}"


def exact(seconds: float) -> str:
    """A limit as configured: "2 seconds", "10 minutes"."""
    if seconds < 60 or seconds % 60:
        return f"{seconds:g} second{'s' if seconds != 1 else ''}"
    minutes = seconds / 60
    return f"{minutes:g} minute{'s' if minutes != 1 else ''}"


def waiting(expected_s: float) -> str:
    return WAITING.format(about=duration(expected_s))


def waited_too_long(limit_s: float) -> str:
    return WAITED_TOO_LONG.format(limit=exact(limit_s))


def too_busy(expected_s: float, limit_s: float) -> str:
    return TOO_BUSY.format(about=duration(expected_s), limit=exact(limit_s))


def too_fast(cooldown_s: float) -> str:
    return TOO_FAST.format(cooldown=exact(cooldown_s))
