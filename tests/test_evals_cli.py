"""`bot eval` end to end with the scripted backend: tables, JSON results, exit codes, variants."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from bot.cli_feedback import EXIT_USAGE, eval_command

CAPTAIN_TESTS = """
cases:
  - name: echoes
    input: "Ahoy there"
    assertions:
      - {type: starts_with, value: "[Captain Redbeard]"}
      - {type: contains, value: "you said: ahoy there", ignore_case: true}
  - name: talks-treasure
    input:
      - {role: user, content: "Hi"}
      - {role: assistant, content: "Arr!"}
      - {role: user, content: "Where is it?"}
    assertions:
      - {type: contains, value: "treasure"}
"""

AB_PERSONA = """
id: abtest
name: AB
system_prompt: Base prompt.
variants:
  - {id: control, weight: 1}
  - {id: short, weight: 1, system_prompt: Short prompt.}
"""

AB_TESTS = """
- name: echo
  input: ping
  assertions: [{type: regex, pattern: "ping$"}]
"""


@pytest.fixture
def env(tmp_path: Path, personas_dir: Path) -> dict[str, str | None]:
    (personas_dir / "tests").mkdir()
    (personas_dir / "tests" / "captain.yaml").write_text(CAPTAIN_TESTS)
    return {
        "BOT_PERSONAS_DIR": str(personas_dir),
        "BOT_DATA_DIR": str(tmp_path / "data"),
        "BOT_MODEL__BACKEND": "scripted",
        "BOT_REDIS__URL": "redis://127.0.0.1:1/0",  # evals must not need Redis at all
    }


def invoke(env: dict[str, str | None], *args: str) -> Result:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps "eval" as a subcommand name
    return CliRunner(env=env).invoke(app, ["eval", *args])


def test_pass_rates_threshold_and_json(env: dict[str, str | None], tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = invoke(env, "captain", "--repeat", "2", "--threshold", "0.5", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert re.search(r"captain\s+default\s+2/4\s+50\.0%\s+15\.0%–85\.0%\s+ok", result.stdout), result.stdout
    assert "talks-treasure" in result.stdout and "contains: reply does not contain 'treasure'" in result.stdout
    assert result.stderr.count(".") >= 2 and "F" in result.stderr and str(out) in result.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["threshold"] == 0.5
    assert {(c["case"], c["passed"], c["total"]) for c in data["cases"]} == {("echoes", 2, 2), ("talks-treasure", 0, 2)}
    assert data["runs"][0]["reply"] == "[Captain Redbeard] You said: Ahoy there"

    strict = invoke(env, "captain", "--threshold", "0.8", "--out", str(out))
    assert strict.exit_code == 1 and "FAIL (< 80%)" in strict.stdout


def test_json_output_and_default_results_path(env: dict[str, str | None], tmp_path: Path) -> None:
    result = invoke(env, "--json", "--threshold", "0")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["targets"][0]["persona"] == "captain"  # only persona with tests
    assert len(list((tmp_path / "data" / "evals").glob("eval-*.json"))) == 1


def test_variants_side_by_side(env: dict[str, str | None], personas_dir: Path) -> None:
    (personas_dir / "abtest.yaml").write_text(AB_PERSONA)
    (personas_dir / "tests" / "abtest.yaml").write_text(AB_TESTS)
    result = invoke(env, "abtest", "--repeat", "3")
    assert result.exit_code == 0, result.stderr
    assert "abtest: variants side by side" in result.stdout and "control vs short: same pass rate" in result.stdout
    only = invoke(env, "abtest", "--variant", "short", "--variant", "default", "--json")
    assert {t["variant"] for t in json.loads(only.stdout)["targets"]} == {"short", "default"}


def test_setup_problems_exit_2(env: dict[str, str | None], personas_dir: Path) -> None:
    unknown_variant = invoke(env, "captain", "--variant", "nope")
    assert unknown_variant.exit_code == EXIT_USAGE and "has no variant nope" in unknown_variant.stderr
    no_cases = invoke(env, "terse")
    assert no_cases.exit_code == EXIT_USAGE and "no test cases for terse" in no_cases.stderr
    ghost = invoke(env, "ghost")
    assert ghost.exit_code == EXIT_USAGE and "no persona 'ghost'" in ghost.stderr
    (personas_dir / "tests" / "captain.yaml").write_text(
        "- {name: x, input: hi, assertions: [{type: regex, pattern: '('}]}"
    )
    broken = invoke(env, "captain")
    assert broken.exit_code == EXIT_USAGE and "invalid regular expression" in broken.stderr
