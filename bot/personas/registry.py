"""The persona registry: personas loaded from a directory, reloadable, errors kept for display."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from bot.domain.persona import Persona
from bot.errors import PersonaFileError, PersonaNotFound
from bot.personas.loader import LoadResult, load_directory

log = logging.getLogger(__name__)


class FilePersonaRegistry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._result = LoadResult()
        self._disabled: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []

    def reload(self) -> LoadResult:
        """Re-read every file. A broken file keeps nothing of its old version (its error is shown)."""
        result = load_directory(self.directory)
        for error in result.errors:
            log.error("persona file skipped: %s", error)
        self._result = result
        self._disabled.clear()
        for listener in self._listeners:
            listener()
        return result

    def on_reload(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every reload (e.g. to drop caches keyed by persona)."""
        self._listeners.append(listener)

    def disable(self, persona_id: str, reason: str) -> None:
        """Take a persona out of service (e.g. its adapter failed to load) until the next reload."""
        log.error("persona %s disabled: %s", persona_id, reason)
        self._disabled[persona_id] = reason

    def get(self, persona_id: str) -> Persona:
        persona = self._result.personas.get(persona_id)
        if persona_id in self._disabled:
            raise PersonaNotFound(persona_id, disabled=self._disabled[persona_id])
        if persona is None:
            raise PersonaNotFound(persona_id, [p.id for p in self.all()])
        return persona

    def all(self) -> list[Persona]:
        return [p for pid, p in sorted(self._result.personas.items()) if pid not in self._disabled]

    def source(self, persona_id: str) -> Path | None:
        return self._result.sources.get(persona_id)

    @property
    def disabled(self) -> dict[str, str]:
        return dict(self._disabled)

    @property
    def errors(self) -> list[PersonaFileError]:
        return list(self._result.errors)
