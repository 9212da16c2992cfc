"""Find and parse a persona's test cases.

Cases live in either place (both are read, names must not clash):
- a `tests:` list inside the persona file itself (personas/pirate.yaml), or
- a file next to the personas: personas/tests/<persona id>.yaml (a list, or a mapping with `cases:`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.errors import PersonaFileError
from bot.evals.cases import EvalSuite

SUFFIXES = (".yaml", ".yml")


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PersonaFileError(path, f"invalid YAML: {exc}", line=line) from exc
    except OSError as exc:
        raise PersonaFileError(path, f"cannot read: {exc}") from exc


def _cases_in_test_file(path: Path) -> list[Any]:
    data = _read_yaml(path)
    if isinstance(data, dict):
        data = data.get("cases", data.get("tests"))
    if not isinstance(data, list):
        raise PersonaFileError(path, "a test file is a list of cases, or a mapping with `cases:`")
    return data


def _cases_in_persona_file(path: Path, persona_id: str) -> list[Any] | None:
    data = _read_yaml(path)
    if not isinstance(data, dict) or data.get("id", path.stem) != persona_id:
        return None
    tests = data.get("tests")
    if tests is None:
        return []
    if not isinstance(tests, list):
        raise PersonaFileError(path, "`tests` must be a list of cases", field="tests")
    return tests


def _validate(persona_id: str, raw: list[Any], sources: list[Path]) -> EvalSuite:
    where = ", ".join(str(p) for p in sources)
    try:
        return EvalSuite(persona=persona_id, cases=raw, source=where)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise PersonaFileError(sources[0], err["msg"], field=field) from exc


def _persona_file_cases(personas_dir: Path, persona_id: str, persona_file: Path | None) -> tuple[list[Any], list[Path]]:
    if persona_file is not None:
        found = _cases_in_persona_file(persona_file, persona_id)
        return (found, [persona_file]) if found else ([], [])
    raw: list[Any] = []
    sources: list[Path] = []
    # Which file holds the persona is unknown here: read them all (few, small); a broken one is the
    # persona loader's to report, not a reason to fail another persona's tests.
    for path in sorted(p for p in personas_dir.glob("*") if p.suffix in SUFFIXES and p.is_file()):
        try:
            found = _cases_in_persona_file(path, persona_id)
        except PersonaFileError:
            continue
        if found:
            raw += found
            sources.append(path)
    return raw, sources


def load_suite(personas_dir: Path, persona_id: str, persona_file: Path | None = None) -> EvalSuite:
    """All test cases declared for this persona (possibly none). `persona_file`, when known (the
    registry knows it), is the persona's own file; otherwise every persona file is looked at."""
    raw, sources = _persona_file_cases(personas_dir, persona_id, persona_file)
    for suffix in SUFFIXES:
        test_file = personas_dir / "tests" / f"{persona_id}{suffix}"
        if test_file.is_file():
            raw += _cases_in_test_file(test_file)
            sources.append(test_file)
    if not sources:
        return EvalSuite(persona=persona_id, cases=())
    return _validate(persona_id, raw, sources)


def load_suite_file(path: Path, persona_id: str) -> EvalSuite:
    """Cases from an explicit file (e.g. `bot eval --cases my-cases.yaml`)."""
    return _validate(persona_id, _cases_in_test_file(path), [path])
