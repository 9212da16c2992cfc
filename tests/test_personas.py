"""Persona files: the shipped ones are valid; a broken file names file, field and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import PersonaFileError, PersonaNotFound
from bot.personas.loader import load_directory, parse_persona
from bot.personas.registry import FilePersonaRegistry

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
id: good
name: Good
system_prompt: Hello {user_name}
"""


def error_for(text: str) -> PersonaFileError:
    with pytest.raises(PersonaFileError) as info:
        parse_persona(Path("p.yaml"), text)
    return info.value


def test_shipped_personas_are_valid() -> None:
    result = load_directory(REPO / "personas")
    assert result.errors == []
    assert {"assistant", "captain", "terse"} <= set(result.personas)


def test_minimal_persona_gets_defaults() -> None:
    persona = parse_persona(Path("p.yaml"), GOOD)
    assert persona.version == "1"
    assert persona.generation.max_new_tokens == 256
    assert persona.examples == ()


def test_numeric_version_is_kept_as_text() -> None:
    assert parse_persona(Path("p.yaml"), GOOD + "version: 1.2\n").version == "1.2"


def test_wrong_type_names_field_and_line() -> None:
    text = GOOD + "generation:\n  temperature: 0.5\n  max_new_tokens: lots\n"
    error = error_for(text)
    assert error.field == "generation.max_new_tokens"
    assert error.line == 6
    assert str(error).startswith("p.yaml:6:19 [generation.max_new_tokens]")


def test_unknown_field_is_rejected_at_its_line() -> None:
    error = error_for(GOOD + "temprature: 0.2\n")
    assert error.field == "temprature"
    assert error.line == 4
    assert "unknown field 'temprature'" in error.message


def test_missing_field_points_at_the_mapping() -> None:
    error = error_for("id: x\nname: X\n")
    assert error.field == "system_prompt"
    assert error.line == 1


def test_unknown_prompt_variable_is_rejected() -> None:
    error = error_for("id: x\nname: X\nsystem_prompt: |\n  Hi {username}\n")
    assert error.field == "system_prompt"
    assert (error.line, error.column) == (4, 6)  # the placeholder itself, inside the block
    assert "{username}" in error.message


def test_example_list_item_line() -> None:
    text = GOOD + "examples:\n  - user: hi\n    assistant: hello\n  - user: only user\n"
    error = error_for(text)
    assert error.field == "examples.1.assistant"
    assert error.line == 7


def test_yaml_syntax_error_has_line() -> None:
    error = error_for(GOOD + "generation: [unclosed\n")
    assert error.line is not None and error.line >= 4
    assert "invalid YAML" in error.message


def test_non_mapping_file() -> None:
    assert "mapping" in error_for("- a\n- b\n").message


def test_broken_file_does_not_stop_the_others(personas_dir: Path) -> None:
    (personas_dir / "zz-broken.yaml").write_text(GOOD.replace("good", "broken") + "generation:\n  top_p: 7\n")
    (personas_dir / "dupe.yaml").write_text(GOOD.replace("id: good", "id: assistant"))
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()
    assert {p.id for p in registry.all()} == set(load_directory(REPO / "personas").personas)
    messages = sorted(str(e) for e in registry.errors)
    assert any("zz-broken.yaml:5:10 [generation.top_p]" in m for m in messages)
    assert any("dupe.yaml:1 [id]" in m and "duplicate" in m and "assistant.yaml" in m for m in messages)
    with pytest.raises(PersonaNotFound):
        registry.get("broken")


def test_disabled_persona_is_out_of_service_until_reload(personas_dir: Path) -> None:
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()
    registry.disable("captain", "adapter missing")
    with pytest.raises(PersonaNotFound):
        registry.get("captain")
    registry.reload()
    assert registry.get("captain").name == "Captain Redbeard"


def test_personas_check_cli_reports_file_field_line(personas_dir: Path) -> None:
    (personas_dir / "broken.yaml").write_text(GOOD + "memory:\n  max_turns: -3\n")
    ok = subprocess.run([sys.executable, "-m", "bot", "personas", "check", str(REPO / "personas")],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "assistant" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "bot", "personas", "check", str(personas_dir)],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1
    assert "broken.yaml:5:14 [memory.max_turns]" in bad.stdout + bad.stderr
