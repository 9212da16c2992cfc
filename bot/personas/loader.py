"""Load persona YAML files; every error names the file, the field and the line.

One persona a file. A broken file is reported and skipped; the others still load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from bot.domain.persona import Persona
from bot.errors import PersonaFileError
from bot.personas.lorebooks import attach_lorebooks

PERSONA_SUFFIXES = (".yaml", ".yml")


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at a pydantic error location (or of its nearest parent)."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    # Point at the key when the value is a block (the key line is what people read).
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
        if isinstance(node, yaml.ScalarNode):
            line = node.start_mark.line + 1
    return line


def _field_name(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


def parse_persona(path: Path, text: str) -> Persona:
    """Parse and validate one persona file's text. Raises PersonaFileError (first problem)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise PersonaFileError(path, f"invalid YAML: {exc.problem or exc}", line=line) from exc
    if not isinstance(data, dict):
        raise PersonaFileError(path, "a persona file must be a mapping of fields (id, name, system_prompt...)", line=1)
    data.pop("tests", None)  # a persona's prompt test suite: read by `bot.evals`, not part of the persona
    try:
        persona = Persona.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if isinstance(p, int | str))
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise PersonaFileError(
            path, f"{first['msg']}{more}", field=_field_name(loc), line=_line_of(root, loc)
        ) from exc
    return attach_lorebooks(persona, path, lambda loc: _line_of(root, loc))  # shared lorebooks, by name


def load_persona_file(path: Path) -> Persona:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaFileError(path, f"cannot read: {exc}") from exc
    return parse_persona(path, text)


@dataclass
class LoadResult:
    personas: dict[str, Persona] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    errors: list[PersonaFileError] = field(default_factory=list)


def persona_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in PERSONA_SUFFIXES and p.is_file())


def load_directory(directory: Path) -> LoadResult:
    result = LoadResult()
    if not directory.is_dir():
        result.errors.append(PersonaFileError(directory, "persona directory does not exist"))
        return result
    for path in persona_files(directory):
        try:
            persona = load_persona_file(path)
        except PersonaFileError as exc:
            result.errors.append(exc)
            continue
        if persona.id in result.personas:
            first = result.sources[persona.id]
            result.errors.append(
                PersonaFileError(path, f"duplicate id {persona.id!r} (already defined in {first})", field="id",
                                 line=_line_of(yaml.compose(path.read_text()), ("id",)))
            )
            continue
        result.personas[persona.id] = persona
        result.sources[persona.id] = path
    return result
