"""The persona registry: personas loaded from a directory, reloaded while the bot runs.

    registry = FilePersonaRegistry(Path("personas"), adapters_root=Path("adapters"))
    registry.reload()                        # read every file (sync: start-up, CLI commands)
    registry.add_validator(check_adapters)   # async (personas) -> {persona id: why it cannot serve}
    registry.on_reload(listener)             # listener(PersonaChanges) after every reload
    await registry.refresh()                 # re-read, validate, swap in, notify (hot reload)

A reload never makes things worse for a file that was working: a broken edit keeps the last good
version of its persona serving (the error is listed in `errors`, for logs and admins); a removed
file removes its persona (callers fall back to the default persona); a persona whose adapter
fails validation is disabled, or keeps its last good version when the edit changed the adapter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.adapters.spec import CONFIG_FILE, WEIGHTS_FILE
from bot.domain.persona import Persona
from bot.errors import PersonaFileError, PersonaNotFound
from bot.personas.documents import DEFAULT_LIMITS, Limits
from bot.personas.loader import LoadResult, load_directory, persona_files
from bot.personas.lorebooks import LOREBOOK_DIR

log = logging.getLogger(__name__)

#: Async check of personas before they serve: {persona id: reason it cannot} (e.g. adapter checks).
Validator = Callable[[list[Persona]], Awaitable[dict[str, str]]]
Stamp = dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class PersonaChanges:
    """What one reload changed (persona ids)."""

    added: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    @property
    def touched(self) -> frozenset[str]:
        return self.added | self.changed | self.removed

    def __str__(self) -> str:
        parts = [f"{word} {', '.join(sorted(ids))}" for word, ids in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if ids]
        return "; ".join(parts) or "no changes"


Listener = Callable[[PersonaChanges], object]


@dataclass
class _State:
    result: LoadResult = field(default_factory=LoadResult)
    disabled: dict[str, str] = field(default_factory=dict)
    #: Personas serving a previous version because their file is broken now: id -> that file.
    stale: dict[str, Path] = field(default_factory=dict)
    #: Problems found by validators, kept for display: one per persona.
    validation: list[PersonaFileError] = field(default_factory=list)
    #: Per persona: the stamp of the adapter files it uses (a retrained adapter is a change).
    adapters: dict[str, Stamp] = field(default_factory=dict)


class FilePersonaRegistry:
    def __init__(self, directory: Path, *, adapters_root: Path | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.directory = directory
        self.adapters_root = adapters_root
        self.limits = limits
        self._state = _State()
        self._listeners: list[Listener] = []
        self._validators: list[Validator] = []
        self._lock: asyncio.Lock | None = None
        self.reloads = 0  # how many reloads changed something (tests wait on it; admins see it)

    # -- loading ------------------------------------------------------------------------------

    def reload(self) -> LoadResult:
        """Re-read every file now and swap the result in (without validators); returns what loaded."""
        result = self._scan()
        self._apply(result, {})
        return result

    async def refresh(self) -> PersonaChanges:
        """Re-read every file, run the validators on what loaded, swap in, notify the listeners.
        Concurrent calls run one after the other."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            result = await asyncio.to_thread(self._scan)
            failures: dict[str, str] = {}
            for validate in self._validators:
                failures.update(await validate(list(result.personas.values())))
            return self._apply(result, failures)

    def _scan(self) -> LoadResult:
        return load_directory(self.directory, adapters_root=self.adapters_root, limits=self.limits,
                              prefer=dict(self._state.result.sources))

    def _apply(self, result: LoadResult, failures: dict[str, str]) -> PersonaChanges:
        old = self._state.result
        state = _State(result=result)
        for persona_id, source in old.sources.items():
            # A file that broke keeps its last good persona serving (unless another file took the id).
            if source in result.failed and persona_id not in result.personas:
                result.personas[persona_id] = old.personas[persona_id]
                result.sources[persona_id] = source
                state.stale[persona_id] = source
                result.errors.append(PersonaFileError(
                    source, f"still serving the last good version of {persona_id!r} until this file is fixed"))
        for persona_id, reason in failures.items():
            before, now = old.personas.get(persona_id), result.personas.get(persona_id)
            if now is None:
                continue
            keep_old = before is not None and before != now and before.adapter != now.adapter \
                and persona_id not in self._state.disabled
            source = result.sources[persona_id]
            if keep_old:
                assert before is not None
                result.personas[persona_id] = before
                state.stale[persona_id] = source
                reason += "; still serving the last good version"
            else:
                state.disabled[persona_id] = reason
            state.validation.append(PersonaFileError(source, reason, field="adapter"))
        state.adapters = {pid: _adapter_stamp(p) for pid, p in result.personas.items()}
        changes = _diff(self._state, state)
        self._state = state
        for error in result.errors + state.validation:
            log.error("persona problem: %s", error)
        if changes:
            self.reloads += 1
            log.info("personas reloaded: %s", changes)
        # Every reload notifies, even one that changed no persona (files may have been rewritten as
        # they were): listeners drop caches, and an extra drop is cheap while a missed one is stale.
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:  # one broken listener must not stop the others or the reload
                log.exception("persona reload listener %r failed", listener)
        return changes

    def on_reload(self, listener: Listener) -> None:
        """Call `listener(changes)` after every reload (drop caches keyed by persona...); `changes`
        says which personas were added, changed or removed, and is empty when none was."""
        self._listeners.append(listener)

    def add_validator(self, validator: Validator) -> None:
        """Run `validator` on the loaded personas at every `refresh` (e.g. adapter checks)."""
        self._validators.append(validator)

    def disable(self, persona_id: str, reason: str) -> None:
        """Take a persona out of service (e.g. its adapter failed to load) until the next reload."""
        log.error("persona %s disabled: %s", persona_id, reason)
        self._state.disabled[persona_id] = reason
        source = self.source(persona_id)
        if source is not None:
            self._state.validation.append(PersonaFileError(source, reason, field="adapter"))

    # -- watching ------------------------------------------------------------------------------

    def stamp(self) -> Stamp:
        """(inode, mtime, size) of every file a reload reads: persona files (through symlinks), the
        shared lorebooks (lorebooks/*.yaml) and the adapter files the personas name. A different
        stamp means a reload may change something."""
        stamp: Stamp = {}
        for path in persona_files(self.directory):
            _stat_into(stamp, path)
        for path in persona_files(self.directory / LOREBOOK_DIR):  # shared lorebooks (and new ones)
            _stat_into(stamp, path)
        for persona in list(self._state.result.personas.values()):
            stamp.update(_adapter_stamp(persona))
        return stamp

    # -- reading -------------------------------------------------------------------------------

    def get(self, persona_id: str) -> Persona:
        persona = self._state.result.personas.get(persona_id)
        if persona_id in self._state.disabled:
            raise PersonaNotFound(persona_id, disabled=self._state.disabled[persona_id])
        if persona is None:
            raise PersonaNotFound(persona_id, [p.id for p in self.all()])
        return persona

    def all(self) -> list[Persona]:
        state = self._state
        return [p for pid, p in sorted(state.result.personas.items()) if pid not in state.disabled]

    def source(self, persona_id: str) -> Path | None:
        return self._state.result.sources.get(persona_id)

    @property
    def disabled(self) -> dict[str, str]:
        return dict(self._state.disabled)

    @property
    def stale(self) -> dict[str, Path]:
        """Personas serving their last good version while their file is broken: id -> file."""
        return dict(self._state.stale)

    @property
    def errors(self) -> list[PersonaFileError]:
        """Every current problem: file problems (one per problem) and why personas are disabled."""
        return [*self._state.result.errors, *self._state.validation]


def _stat_into(stamp: Stamp, path: Path) -> None:
    for follow in (False, True):  # the link itself and what it points to
        try:
            info = path.stat(follow_symlinks=follow)
        except (OSError, ValueError):
            stamp[f"{path}|{follow}"] = (0, 0, -1)
            continue
        stamp[f"{path}|{follow}"] = (info.st_ino, info.st_mtime_ns, info.st_size)


def _adapter_stamp(persona: Persona) -> Stamp:
    stamp: Stamp = {}
    for adapter in {persona.adapter, *(v.adapter for v in persona.variants)}:
        if adapter:
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                _stat_into(stamp, Path(adapter) / name)
    return stamp


def _diff(old: _State, new: _State) -> PersonaChanges:
    before, after = old.result.personas, new.result.personas
    added = {pid for pid in after if pid not in before}
    removed = {pid for pid in before if pid not in after}
    changed = {
        pid for pid in after
        if pid in before and (
            before[pid] != after[pid]
            or old.disabled.get(pid) != new.disabled.get(pid)
            or old.adapters.get(pid) != new.adapters.get(pid)
        )
    }
    return PersonaChanges(frozenset(added), frozenset(changed), frozenset(removed))
