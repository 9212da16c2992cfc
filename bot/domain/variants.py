"""Sticky, weighted choice of a prompt variant for a conversation (A/B tests of prompts).

The choice is a pure function of (salt, conversation id, period bucket, weights): no state is
stored, so restarts and several bot processes agree, and a conversation keeps its variant for
the whole period. Each conversation's periods are shifted by its own phase, so rollovers are
spread over the period instead of reshuffling every conversation at the same instant.

    choose_variant("persona:pirate", "discord:chan:42", [("control", 50), ("terse", 50)],
                   period_hours=24, now=time.time())
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

DEFAULT_VARIANT = "default"

Weighted = tuple[str, float]


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from text: the first 8 bytes of SHA-256 (stable across runs,
    unlike Python's salted `hash()`)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def period_bucket(conversation_id: str, now: float, period_hours: float, *, salt: str = "") -> int:
    """Which period this conversation is in; 0 forever when period_hours <= 0 (never rotate)."""
    if period_hours <= 0:
        return 0
    period_s = period_hours * 3600.0
    phase = unit_hash(salt, "phase", conversation_id)
    return math.floor(now / period_s + phase)


def pick_weighted(weights: Sequence[Weighted], u: float) -> str:
    """The option whose cumulative-weight slice contains u (0 <= u < 1). Zero weights never win."""
    options = [(name, float(w)) for name, w in weights if w > 0]
    if not options:
        raise ValueError("at least one variant needs a positive weight")
    total = sum(w for _, w in options)
    threshold = u * total
    running = 0.0
    for name, weight in options:
        running += weight
        if threshold < running:
            return name
    return options[-1][0]  # u * total rounded up to total: the last slice owns its end


def choose_variant(
    salt: str,
    conversation_id: str,
    weights: Sequence[Weighted],
    *,
    period_hours: float,
    now: float,
) -> str:
    """The variant this conversation uses now; DEFAULT_VARIANT when there are no variants.

    `salt` (e.g. the persona id) keeps assignments of different experiments independent.
    """
    if not weights:
        return DEFAULT_VARIANT
    bucket = period_bucket(conversation_id, now, period_hours, salt=salt)
    return pick_weighted(weights, unit_hash(salt, "variant", conversation_id, str(bucket)))
