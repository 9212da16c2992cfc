"""Load persona YAML files: any bytes give a Persona or every problem as `file:line:column [field]: message`.

One persona a file: every `*.yaml` / `*.yml` directly in the persona directory (dotfiles, such as
editors' lock and swap files, are skipped; `tests/` holds eval suites, read by `bot.evals`). A broken
file is reported and skipped; the others still load. Reading is bounded (bot.personas.documents):
no file can crash, hang or exhaust the loader.

    result = load_directory(Path("personas"), adapters_root=Path("adapters"))
    result.personas["captain"], result.sources["captain"], result.errors   # one error per problem
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bot.adapters.spec import adapter_path_problem
from bot.domain.persona import Persona
from bot.domain.templates import TemplateError
from bot.errors import PersonaFileError, PersonaFileProblems
from bot.personas.documents import DEFAULT_LIMITS, Document, Limits, parse_document, read_document
from bot.personas.lorebooks import attach_lorebooks

PERSONA_SUFFIXES = (".yaml", ".yml")
#: Keys a persona file may hold that are not Persona fields: read by other parts of the bot.
SIDE_KEYS = ("tests",)


def field_name(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


def validation_problems(
    document: Document, model: type[BaseModel], data: Any, *, prefix: Sequence[str | int] = ()
) -> tuple[Any, list[PersonaFileError]]:
    """Validate `data` (found at `prefix` in `document`) as `model`: (the model or None, one error per
    problem, each at its line and column). For other file kinds (suites, lorebooks) too."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        raw = exc.errors(include_url=False)
    # An error whose place holds a more precise error is its echo ("list too short" after its only
    # item failed): only the precise one is shown.
    locs = [tuple(err["loc"]) for err in raw]
    precise = [err for err, loc in zip(raw, locs, strict=True)
               if not any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)]
    errors = [_problem(document, err, prefix) for err in precise]
    return None, sorted(errors, key=lambda e: (e.line or 0, e.column or 0))


def _problem(document: Document, err: Any, prefix: Sequence[str | int]) -> PersonaFileError:
    loc = (*prefix, *(p for p in err["loc"] if isinstance(p, int | str)))
    message = str(err["msg"]).removeprefix("Value error, ")
    cause = (err.get("ctx") or {}).get("error")
    shown = repr(err.get("input")) if not isinstance(err.get("input"), dict | list) else ""
    if err["type"] == "extra_forbidden":
        line, column = document.locate(loc, at_key=True)
        message = f"unknown field {loc[-1]!r}{_suggestion(document, loc)}"
    elif isinstance(cause, TemplateError):
        line, column = document.text_position(loc, cause.offset)
    else:
        line, column = document.locate(loc)
    if shown and err["type"] not in ("missing", "extra_forbidden") and not isinstance(cause, TemplateError):
        message += f" (got {shown[:60] + '…' if len(shown) > 60 else shown})"
    return PersonaFileError(document.path, message, field=field_name(loc), line=line, column=column)


def _suggestion(document: Document, loc: Sequence[str | int]) -> str:
    node, _ = document.node_at(loc[:-1])
    parent = _model_at(Persona, loc[:-1])
    if parent is None or node.kind != "map":
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if info is None:
            return None
        current = _inner_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def persona_from_document(document: Document, *, adapters_root: Path | None = None) -> Persona:
    """Validate a parsed persona file; raises PersonaFileProblems with every problem."""
    data = document.data
    if not isinstance(data, dict):
        raise PersonaFileProblems([*document.problems, PersonaFileError(
            document.path, "a persona file must be a mapping of fields (id, name, system_prompt...)", line=1, column=1
        )])
    data = {k: v for k, v in data.items() if k not in SIDE_KEYS}
    version = data.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        data["version"] = _raw_scalar(document, ("version",))
    persona, problems = validation_problems(document, Persona, data)
    problems += document.problems
    if adapters_root is not None:
        problems += _adapter_problems(document, data, adapters_root)
    problems.sort(key=lambda e: (e.line or 0, e.column or 0))
    if problems:
        raise PersonaFileProblems(problems)
    # Shared lorebooks, by name (personas/lorebooks/NAME.yaml); a missing or broken one is this file's error.
    return attach_lorebooks(persona, document.path, document.locate)


def _raw_scalar(document: Document, loc: Sequence[str | int]) -> str:
    """A scalar as written (`version: 1.10` stays "1.10", not the float 1.1)."""
    node, _ = document.node_at(loc)
    lines = document.text.splitlines()
    raw = lines[node.line - 1][node.column - 1 :] if 0 < node.line <= len(lines) else str(node.value)
    return raw.split("#", 1)[0].strip() or str(node.value)


def _adapter_problems(document: Document, data: dict[str, Any], root: Path) -> list[PersonaFileError]:
    """Where each `adapter:` (the persona's, its variants') points, checked even when other fields
    are broken, so one run lists every problem."""
    problems = []
    places: list[tuple[tuple[str | int, ...], object]] = [(("adapter",), data.get("adapter"))]
    variants = data.get("variants")
    if isinstance(variants, list):
        places += [
            (("variants", i, "adapter"), v.get("adapter")) for i, v in enumerate(variants) if isinstance(v, dict)
        ]
    for loc, adapter in places:
        if not isinstance(adapter, str) or not adapter.strip():
            continue
        why = adapter_path_problem(adapter, root)
        if why is not None:
            line, column = document.locate(loc)
            problems.append(PersonaFileError(document.path, why, field=field_name(loc), line=line, column=column))
    return problems


def parse_persona(
    path: Path, text: str, *, limits: Limits = DEFAULT_LIMITS, adapters_root: Path | None = None
) -> Persona:
    """Parse and validate one persona file's text. Raises PersonaFileProblems (every problem)."""
    return persona_from_document(parse_document(path, text, limits), adapters_root=adapters_root)


def load_persona_file(
    path: Path, *, root: Path | None = None, limits: Limits = DEFAULT_LIMITS, adapters_root: Path | None = None
) -> Persona:
    """Read (symlinks only to regular files inside `root`, default: the file's directory) and validate."""
    document = read_document(path, root=root or path.parent, limits=limits)
    return persona_from_document(document, adapters_root=adapters_root)


@dataclass
class LoadResult:
    personas: dict[str, Persona] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    #: One entry per problem, in file order.
    errors: list[PersonaFileError] = field(default_factory=list)
    #: Files that failed, whatever their number of problems.
    failed: set[Path] = field(default_factory=set)


def persona_files(directory: Path) -> list[Path]:
    """Candidate persona files: `*.yaml` / `*.yml` directly in `directory`, dotfiles skipped. Not
    filtered by type: a symlink, directory or FIFO with that name is reported by the loader."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.suffix.lower() in PERSONA_SUFFIXES and not p.name.startswith("."))


def load_directory(
    directory: Path,
    *,
    adapters_root: Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    prefer: dict[str, Path] | None = None,
) -> LoadResult:
    """Every persona file of `directory`. A duplicate id is an error in the later file naming the
    earlier one; `prefer` ({id: file}) says which file keeps an id (the one that had it before a reload)."""
    result = LoadResult()
    if not directory.is_dir():
        result.errors.append(PersonaFileError(directory, "persona directory does not exist (BOT_PERSONAS_DIR)"))
        return result
    loaded: list[tuple[Path, Persona]] = []
    for path in persona_files(directory):
        try:
            loaded.append((path, load_persona_file(path, root=directory, limits=limits, adapters_root=adapters_root)))
        except PersonaFileProblems as exc:
            result.errors += exc.problems
            result.failed.add(path)
    _add_unique(result, loaded, prefer or {})
    return result


def _add_unique(result: LoadResult, loaded: Iterable[tuple[Path, Persona]], prefer: dict[str, Path]) -> None:
    ordered = sorted(loaded, key=lambda item: (prefer.get(item[1].id) != item[0], str(item[0])))
    for path, persona in ordered:
        first = result.sources.get(persona.id)
        if first is None:
            result.personas[persona.id] = persona
            result.sources[persona.id] = path
            continue
        result.errors.append(PersonaFileError(
            path, f"duplicate id {persona.id!r}: {first} already defines it (that one is used)",
            field="id", line=_id_line(path), column=None))
        result.failed.add(path)


def _id_line(path: Path) -> int | None:
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if line.startswith("id:"):
                return number
    except OSError:
        return None
    return None
