"""Shared lorebooks: `personas/lorebooks/NAME.yaml`, used by any persona that lists `lorebooks: [NAME]`.

The persona loader calls `attach_lorebooks` once per persona: each name is resolved to its file,
loaded (once per file version: personas sharing a 10,000-entry book share one parsed, indexed copy)
and attached to the persona. An unknown or broken lorebook fails that persona with file, field and
line; other personas keep working. `python -m bot personas import-lorebook` converts SillyTavern
world-info and `lorebook_v3` JSON files into this format.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from bot.domain.lorebook import Lorebook
from bot.domain.persona import Persona
from bot.errors import PersonaFileError, PersonaFileProblems
from bot.personas.documents import Document, Limits, parse_document, read_document

LOREBOOK_DIR = "lorebooks"
MAX_LOREBOOK_BYTES = 32 * 1024 * 1024
#: Bounds on one lorebook file: room for tens of thousands of entries, none for a YAML bomb.
LOREBOOK_LIMITS = Limits(
    max_bytes=MAX_LOREBOOK_BYTES, max_values=2_000_000, max_items=200_000, max_string=200_000, max_problems=50
)
_CACHE_SIZE = 64

Locate = Callable[[Sequence[int | str]], tuple[int, int]]

_cache: dict[Path, tuple[tuple[int, int, int], Lorebook]] = {}
_lock = threading.Lock()


def lorebook_path(persona_dir: Path, name: str) -> Path:
    """Where the shared lorebook `name` lives (names are validated ids: no path tricks)."""
    return persona_dir / LOREBOOK_DIR / f"{name}.yaml"


def _validated(document: Document) -> Lorebook:
    from bot.personas.loader import validation_problems  # the loader imports this module

    if not isinstance(document.data, dict):
        raise PersonaFileError(
            document.path, "a lorebook file is a mapping with `entries:` (and settings)", line=1, column=1
        )
    book, problems = validation_problems(document, Lorebook, document.data)
    problems += document.problems
    if problems:
        raise PersonaFileProblems(sorted(problems, key=lambda e: (e.line or 0, e.column or 0)))
    assert isinstance(book, Lorebook)
    return book


def parse_lorebook(path: Path, text: str) -> Lorebook:
    """Parse and validate one lorebook file's text (bounded like persona files, with room for large
    books). Raises PersonaFileError (file, field, line; every problem)."""
    return _validated(parse_document(path, text, LOREBOOK_LIMITS))


def load_lorebook_file(path: Path) -> Lorebook:
    """The lorebook at `path`, parsed once per file version (inode, modification time and size)."""
    try:
        stat = path.stat()
        if stat.st_size > MAX_LOREBOOK_BYTES:
            raise PersonaFileError(path, f"lorebook file larger than {MAX_LOREBOOK_BYTES // 2**20} MiB")
        # The inode too: an editor's rename-over-the-file can keep the size and, on coarse clocks, the time.
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with _lock:
            cached = _cache.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
    except OSError as exc:
        raise PersonaFileError(path, f"cannot read: {exc}") from exc
    book = _validated(read_document(path, root=path.parent, limits=LOREBOOK_LIMITS))
    with _lock:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[path] = (version, book)
    return book


def attach_lorebooks(persona: Persona, persona_path: Path, locate: Locate) -> Persona:
    """`persona` with its shared `lorebooks` loaded; `locate(loc)` gives (line, column) in the persona
    file. Raises PersonaFileProblems naming every unknown or broken lorebook at its line in the file."""
    if not persona.lorebooks:
        return persona
    books, problems = [], []
    for i, name in enumerate(persona.lorebooks):
        path = lorebook_path(persona_path.parent, name)
        field = f"lorebooks.{i}"
        line, column = locate(("lorebooks", i))
        if not path.is_file():
            problems.append(PersonaFileError(persona_path, f"unknown lorebook {name!r}: there is no {path}",
                                             field=field, line=line, column=column))
            continue
        try:
            books.append((name, load_lorebook_file(path)))
        except PersonaFileError as exc:
            first = str(exc).splitlines()[0]
            more = f" (and {len(exc.problems) - 1} more problem(s) there)" if isinstance(exc, PersonaFileProblems) \
                and len(exc.problems) > 1 else ""
            problems.append(PersonaFileError(persona_path, f"lorebook {name!r} is broken: {first}{more}",
                                             field=field, line=line, column=column))
    if problems:
        raise PersonaFileProblems(problems)
    return persona.with_lorebooks(tuple(books))
