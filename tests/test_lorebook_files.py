"""Shared lorebook files next to the personas (bot.personas.lorebooks), through the persona loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.errors import PersonaFileError
from bot.personas.loader import load_directory
from bot.personas.lorebooks import load_lorebook_file

WORLD = """\
name: The Shattered Isles
scan_depth: 3
recursive_scanning: true
entries:
  - id: harbor
    keys: [harbor, port]
    content: "The harbor of Vell is closed at night."
  - id: vell
    keys: [Vell]
    content: Vell is ruled by a council of five.
"""


def persona_file(directory: Path, pid: str, books: str) -> Path:
    path = directory / f"{pid}.yaml"
    path.write_text(f"id: {pid}\nname: {pid.title()}\nsystem_prompt: You are {pid}.\n{books}")
    return path


@pytest.fixture
def books(tmp_path: Path) -> Path:
    (tmp_path / "lorebooks").mkdir()
    (tmp_path / "lorebooks" / "isles.yaml").write_text(WORLD)
    return tmp_path


def test_personas_share_one_loaded_book(books: Path) -> None:
    persona_file(books, "sailor", "lorebooks: [isles]\n")
    persona_file(books, "guard", "lorebooks:\n  - isles\n")
    result = load_directory(books)
    assert result.errors == []
    sailor, guard = result.personas["sailor"], result.personas["guard"]
    [(ref, book)] = [(s.ref, s.book) for s in sailor.lore_sources]
    assert ref == "isles" and book.name == "The Shattered Isles" and len(book.entries) == 2
    assert guard.lore_sources[0].book is book, "parsed and indexed once"


def test_unknown_lorebook_is_an_error_with_file_field_and_line(books: Path) -> None:
    path = persona_file(books, "sailor", "lorebooks:\n  - isles\n  - nowhere\n")
    persona_file(books, "guard", "lorebooks: [isles]\n")
    result = load_directory(books)
    [error] = result.errors
    assert error.path == path and error.field == "lorebooks.1" and error.line == 6
    assert "unknown lorebook 'nowhere'" in str(error)
    assert "guard" in result.personas, "the other personas keep working"


def test_a_broken_lorebook_names_its_own_file_and_line(books: Path) -> None:
    (books / "lorebooks" / "bad.yaml").write_text("entries:\n  - keys: [a]\n    content: x\n    position: sideways\n")
    persona_file(books, "sailor", "lorebooks: [bad]\n")
    [error] = load_directory(books).errors
    assert "lorebook 'bad' is broken" in str(error)
    assert "bad.yaml:4:15 [entries.0.position]" in str(error)


def test_a_yaml_bomb_is_refused(books: Path) -> None:
    path = books / "lorebooks" / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path.write_text("\n".join(levels) + "\nentries:\n  - keys: *a8\n    content: boom\n")
    with pytest.raises(PersonaFileError, match="values"):
        load_lorebook_file(path)


def test_an_edited_lorebook_is_read_again(books: Path) -> None:
    path = books / "lorebooks" / "isles.yaml"
    first = load_lorebook_file(path)
    assert load_lorebook_file(path) is first
    path.write_text(WORLD.replace("council of five", "council of seven"))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert "seven" in load_lorebook_file(path).entries[1].content


def test_inline_lorebook_in_a_persona(tmp_path: Path) -> None:
    persona_file(tmp_path, "sailor", "lorebook:\n  entries:\n    - keys: [fish]\n      content: Fish are friends.\n")
    persona = load_directory(tmp_path).personas["sailor"]
    assert persona.lore_sources[0].ref == "persona"
    assert persona.lore_sources[0].book.entries[0].content == "Fish are friends."
