"""Token counting for backends without a local tokenizer."""

from __future__ import annotations


def approx_token_count(text: str) -> int:
    """Rough token estimate for backends without a local tokenizer (~4 characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0
