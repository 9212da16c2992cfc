"""Find and parse a persona's test cases.

Cases live in either place (both are read, names must not clash):
- a `tests:` list inside the persona file itself (personas/pirate.yaml), or
- a file next to the personas: personas/tests/<persona id>.yaml (a list, or a mapping with `cases:`).

Files are read like persona files (bot.personas.documents): bounded, and every problem is a
`file:line:column [field]: message` line (PersonaFileProblems), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from bot.errors import PersonaFileError, PersonaFileProblems
from bot.evals.cases import EvalCase, EvalSuite
from bot.personas.documents import Document, read_document
from bot.personas.loader import validation_problems

SUFFIXES = (".yaml", ".yml")

#: (document, where the list of cases is in it, the raw cases)
_Found = tuple[Document, tuple[str | int, ...], list[Any]]


def _read(path: Path) -> Document:
    return read_document(path, root=path.parent)


def _cases_in_test_file(path: Path) -> _Found:
    document = _read(path)
    data, where = document.data, cast(tuple[str | int, ...], ())
    if isinstance(data, dict):
        key = "cases" if "cases" in data else "tests"
        data, where = data.get(key), (key,)
    if not isinstance(data, list):
        line, column = document.locate(where)
        raise PersonaFileProblems([PersonaFileError(
            path, "a test file is a list of cases, or a mapping with `cases:`", line=line, column=column)])
    return document, where, data


def _cases_in_persona_file(path: Path, persona_id: str) -> _Found | None:
    document = _read(path)
    data = document.data
    if not isinstance(data, dict) or data.get("id", path.stem) != persona_id:
        return None
    tests = data.get("tests")
    if tests is None:
        return document, ("tests",), []
    if not isinstance(tests, list):
        line, column = document.locate(("tests",))
        raise PersonaFileProblems([PersonaFileError(
            path, "`tests` must be a list of cases", field="tests", line=line, column=column)])
    return document, ("tests",), tests


def _validate(persona_id: str, found: list[_Found]) -> EvalSuite:
    """Every case of every file, each problem at its own line; names unique across the files."""
    cases: list[EvalCase] = []
    problems: list[PersonaFileError] = []
    seen: dict[str, Path] = {}
    for document, where, raw in found:
        problems += document.problems
        for index, item in enumerate(raw):
            case, errors = validation_problems(document, EvalCase, item, prefix=(*where, index))
            problems += [_labelled(e, where) for e in errors]
            if case is None:
                continue
            if case.name in seen:
                line, column = document.locate((*where, index, "name"))
                problems.append(PersonaFileError(
                    document.path, f"duplicate test case name {case.name!r} (also in {seen[case.name]})",
                    field=f"cases.{index}.name", line=line, column=column))
                continue
            seen[case.name] = document.path
            cases.append(case)
    if problems:
        raise PersonaFileProblems(problems)
    return EvalSuite(persona=persona_id, cases=tuple(cases), source=", ".join(str(f[0].path) for f in found))


def _labelled(error: PersonaFileError, where: tuple[str | int, ...]) -> PersonaFileError:
    """Fields read `cases.N...` whether the cases are the whole file or under `cases:`/`tests:`."""
    field = error.field or ""
    if not where:
        field = f"cases.{field}"
    elif where == ("tests",):
        field = "cases." + field.removeprefix("tests.")
    return PersonaFileError(error.path, error.message, field=field, line=error.line, column=error.column)


def _persona_file_cases(personas_dir: Path, persona_id: str, persona_file: Path | None) -> list[_Found]:
    if persona_file is not None:
        found = _cases_in_persona_file(persona_file, persona_id)
        return [found] if found and found[2] else []
    result: list[_Found] = []
    # Which file holds the persona is unknown here: read them all (few, small); a broken one is the
    # persona loader's to report, not a reason to fail another persona's tests.
    for path in sorted(p for p in personas_dir.glob("*") if p.suffix in SUFFIXES and not p.name.startswith(".")):
        try:
            found = _cases_in_persona_file(path, persona_id)
        except PersonaFileError:
            continue
        if found and found[2]:
            result.append(found)
    return result


def load_suite(personas_dir: Path, persona_id: str, persona_file: Path | None = None) -> EvalSuite:
    """All test cases declared for this persona (possibly none). `persona_file`, when known (the
    registry knows it), is the persona's own file; otherwise every persona file is looked at.
    Raises PersonaFileProblems (a PersonaFileError) listing every problem."""
    found = _persona_file_cases(personas_dir, persona_id, persona_file)
    for suffix in SUFFIXES:
        test_file = personas_dir / "tests" / f"{persona_id}{suffix}"
        if test_file.exists() or test_file.is_symlink():
            found.append(_cases_in_test_file(test_file))
    if not found:
        return EvalSuite(persona=persona_id, cases=())
    return _validate(persona_id, found)


def load_suite_file(path: Path, persona_id: str) -> EvalSuite:
    """Cases from an explicit file (e.g. `bot eval --cases my-cases.yaml`)."""
    return _validate(persona_id, [_cases_in_test_file(path)])
