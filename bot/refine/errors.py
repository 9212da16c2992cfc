"""Errors of the refinement loop (all `BotError`s, so the CLI prints one clear line).

    RefineError
    ├── NotEnoughData        too few rated replies / conversations for this step: .needed
    ├── OptimizerError       the optimiser model failed or answered with nothing usable: .raw
    ├── PersonaFileError*    (bot.errors) a persona file edit would be invalid: .path, .field, .line
    ├── PersonaFileChanged   the persona file changed under us; nothing was written: .path
    ├── GateRejected         a candidate that did not pass the offline gate cannot go live
    └── ExperimentError      no experiment running, one already running, or a wrong state
"""

from __future__ import annotations

from pathlib import Path

from bot.errors import BotError


class RefineError(BotError):
    """A step of the refinement loop cannot run."""


class NotEnoughData(RefineError):
    def __init__(self, message: str, *, needed: str = "") -> None:
        self.needed = needed
        super().__init__(message)


class OptimizerError(RefineError):
    """The optimiser model is unreachable or its answer is unusable; nothing was changed."""

    def __init__(self, message: str, *, raw: str = "") -> None:
        self.raw = raw
        shown = f" (answer began: {raw[:160]!r})" if raw else ""
        super().__init__(f"optimiser: {message}{shown}")


class PersonaFileChanged(RefineError):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} changed while refine was editing it; nothing was written (run it again)")


class GateRejected(RefineError):
    """A candidate that failed (or never ran) the offline gate was asked to go live."""


class ExperimentError(RefineError):
    """No experiment, an experiment already running, or an action its state does not allow."""
