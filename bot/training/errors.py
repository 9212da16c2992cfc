"""The training error: bad data or options, one clear line for the CLI."""

from __future__ import annotations

from bot.errors import BotError


class TrainingError(BotError):
    """Training cannot run: unusable data, a persona without a local model, a bad output path."""
