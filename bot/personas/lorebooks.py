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

import yaml
from pydantic import ValidationError

from bot.domain.lorebook import Lorebook
from bot.domain.persona import Persona
from bot.errors import PersonaFileError

LOREBOOK_DIR = "lorebooks"
MAX_LOREBOOK_BYTES = 32 * 1024 * 1024
_CACHE_SIZE = 64

LineOf = Callable[[Sequence[int | str]], int | None]

_cache: dict[Path, tuple[tuple[int, int], Lorebook]] = {}
_lock = threading.Lock()


def lorebook_path(persona_dir: Path, name: str) -> Path:
    """Where the shared lorebook `name` lives (names are validated ids: no path tricks)."""
    return persona_dir / LOREBOOK_DIR / f"{name}.yaml"


def _node_line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its nearest parent)."""
    node, line = root, (None if root is None else root.start_mark.line + 1)
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _reject_aliases(root: yaml.Node | None, path: Path) -> None:
    """Anchors and aliases let a small file expand into a huge one (a "billion laughs"): not in lorebooks."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise PersonaFileError(path, "YAML anchors/aliases are not allowed in lorebook files",
                                   line=node.start_mark.line + 1)
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def parse_lorebook(path: Path, text: str) -> Lorebook:
    """Parse and validate one lorebook file's text. Raises PersonaFileError (file, field, line)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _reject_aliases(root, path)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise PersonaFileError(path, f"invalid YAML: {exc.problem or exc}", line=line) from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise PersonaFileError(path, f"invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PersonaFileError(path, "a lorebook file is a mapping with `entries:` (and settings)", line=1)
    try:
        return Lorebook.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if isinstance(p, int | str))
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise PersonaFileError(path, f"{first['msg']}{more}", field=".".join(map(str, loc)) or None,
                               line=_node_line(root, loc)) from exc


def load_lorebook_file(path: Path) -> Lorebook:
    """The lorebook at `path`, parsed once per file version (size and modification time)."""
    try:
        stat = path.stat()
        if stat.st_size > MAX_LOREBOOK_BYTES:
            raise PersonaFileError(path, f"lorebook file larger than {MAX_LOREBOOK_BYTES // 2**20} MiB")
        version = (stat.st_mtime_ns, stat.st_size)
        with _lock:
            cached = _cache.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        text = path.read_bytes()[:MAX_LOREBOOK_BYTES + 1].decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaFileError(path, f"cannot read: {exc}") from exc
    book = parse_lorebook(path, text)
    with _lock:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        _cache[path] = (version, book)
    return book


def attach_lorebooks(persona: Persona, persona_path: Path, line_of: LineOf) -> Persona:
    """`persona` with its shared `lorebooks` loaded; `line_of(loc)` gives a line in the persona file."""
    if not persona.lorebooks:
        return persona
    books = []
    for i, name in enumerate(persona.lorebooks):
        path = lorebook_path(persona_path.parent, name)
        field, line = f"lorebooks.{i}", line_of(("lorebooks", i))
        if not path.is_file():
            raise PersonaFileError(persona_path, f"unknown lorebook {name!r}: there is no {path}", field=field,
                                   line=line)
        try:
            books.append((name, load_lorebook_file(path)))
        except PersonaFileError as exc:
            raise PersonaFileError(persona_path, f"lorebook {name!r} is broken: {exc}", field=field,
                                   line=line) from exc
    return persona.with_lorebooks(tuple(books))
