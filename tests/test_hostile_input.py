"""Hostile input never stops the bot: persona files, templates, settings, CLI paths, console text,
eval suites and training data. Each error is one located line; nothing crashes or hangs."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app import build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import PROMPT_VARIABLES, Persona
from bot.domain.prompt import PromptContext, render
from bot.domain.templates import TemplateError, check_template
from bot.domain.text import TerminalFilter, terminal_safe, valid_text
from bot.errors import PersonaFileProblems
from bot.evals.assertions import check_regex
from bot.evals.cases import Regex
from bot.evals.loader import load_suite
from bot.personas.check import check_personas
from bot.personas.documents import Limits, parse_document
from bot.personas.loader import load_directory, parse_persona
from bot.settings import Settings
from bot.training.data import load_jsonl
from bot.transports.console import run_console

REPO = Path(__file__).resolve().parent.parent
GOOD = "id: good\nname: Good\nsystem_prompt: Hello {user_name}\n"


def problems(text: str | bytes, **kw: object) -> list[str]:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(PersonaFileProblems) as info:
        if isinstance(text, bytes):
            from bot.personas.documents import decode

            parse_persona(Path("p.yaml"), decode(Path("p.yaml"), raw), **kw)  # type: ignore[arg-type]
        else:
            parse_persona(Path("p.yaml"), text, **kw)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


# -- persona files -----------------------------------------------------------------------------------


def test_every_problem_of_a_file_is_listed_with_line_column_and_field() -> None:
    found = problems("id: Bad Id\nname: ''\nsystem_prompt: hi\ngeneration:\n  top_p: 7\n  temprature: 1\n")
    assert found == [
        "p.yaml:1:5 [id]: String should match pattern '^[a-z0-9][a-z0-9_-]{0,63}$' (got 'Bad Id')",
        "p.yaml:2:7 [name]: String should have at least 1 character (got '')",
        "p.yaml:5:10 [generation.top_p]: Input should be less than or equal to 1 (got 7)",
        "p.yaml:6:3 [generation.temprature]: unknown field 'temprature'; did you mean 'temperature'?",
    ]


def test_yaml_errors_point_where_the_problem_starts() -> None:
    assert problems(GOOD + 'greeting: "unclosed\nexamples: []\nversion: 2\n') == [
        "p.yaml:4:11: invalid YAML: this quote is never closed"
    ]
    [bracket] = problems(GOOD + "examples: [\n  {user: a, assistant: b}\nversion: 2\n")
    assert bracket.startswith("p.yaml:4:11: invalid YAML: while parsing a flow sequence")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'id: x\nname: X\nsystem_prompt: "hi\x01"\n', "p.yaml:3:19: character U+0001 is not allowed"),
        (b"id: x\nname: X\nsystem_prompt: caf\xe9\n", "p.yaml:3:19: not valid UTF-8 (byte 0xe9)"),
        (b"\xff\xfei\x00d\x00", "p.yaml:1:1: the file is UTF-16; save it as UTF-8"),
        (b'id: x\nname: X\nsystem_prompt: "hi\\x01"\n', "p.yaml:3:16 [system_prompt]: character U+0001"),
        (b'id: x\nname: X\nsystem_prompt: "hi\\ud800"\n', "p.yaml:3:21: invalid YAML"),
        (b"id: x\nname: X\nversion: " + b"9" * 5000 + b"\nsystem_prompt: x\n", "p.yaml:3:10: number of 5,000 char"),
        (b"id: x\nname: X\nsystem_prompt: x\nmodel: " + b"[" * 500 + b"]" * 500 + b"\n", "nested more than 24 levels"),
        (b"id: x\nid: y\nname: X\nsystem_prompt: x\n", "p.yaml:2:1 [id]: duplicate key 'id' (first at line 1"),
        (b"id: x\nname: !!python/object:os.system X\nsystem_prompt: x\n", "p.yaml:2:7: unsupported tag"),
        (b"id: x\n---\nname: X\n", "p.yaml:2:1: one document per file"),
        (b"- a\n- b\n", "p.yaml:1:1: a persona file must be a mapping"),
    ],
)
def test_hostile_bytes_give_located_problems(text: bytes, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_work_is_bounded_for_bombs_and_huge_files() -> None:
    laughs = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(PersonaFileProblems, match="more than 20,000 values"):
        parse_document(Path("p.yaml"), laughs)
    keys = "\n".join(f"k{i}: {i}" for i in range(100_000))
    with pytest.raises(PersonaFileProblems, match="more than 500 keys"):
        parse_document(Path("p.yaml"), keys, Limits(max_bytes=10_000_000))
    examples = "examples:\n" + "".join(f"  - {{user: q{i}, assistant: a{i}}}\n" for i in range(50_000))
    with pytest.raises(PersonaFileProblems, match="more than 2,000 items"):
        parse_document(Path("p.yaml"), examples, Limits(max_bytes=10_000_000))


def test_files_over_the_size_limit_are_refused_before_reading(tmp_path: Path) -> None:
    (tmp_path / "huge.yaml").write_bytes(b"#" * (600 * 1024))
    (tmp_path / "ok.yaml").write_text(GOOD)
    result = load_directory(tmp_path)
    assert list(result.personas) == ["good"]
    [error] = result.errors
    assert str(error) == f"{tmp_path / 'huge.yaml'}: file too large: 614,400 bytes (the limit is 524,288)"


def test_symlinks_are_followed_inside_the_directory_and_refused_otherwise(tmp_path: Path) -> None:
    directory = tmp_path / "personas"
    directory.mkdir()
    (directory / "real.yaml").write_text(GOOD)
    (directory / "alias.yaml").symlink_to(directory / "sub.yml")
    (directory / "sub.yml").write_text(GOOD.replace("good", "linked"))
    (directory / "dangling.yaml").symlink_to(directory / "gone.yaml")
    (directory / "outside.yaml").symlink_to("/etc/hostname")
    (directory / "adir.yaml").mkdir()
    os.mkfifo(directory / "pipe.yaml")
    (directory / ".#real.yaml").symlink_to("nowhere")  # an editor's lock file: ignored
    result = load_directory(directory)
    assert set(result.personas) == {"good", "linked"}
    messages = {Path(str(e.path)).name: e.message for e in result.errors}
    assert messages["dangling.yaml"] == "broken symlink: its target does not exist"
    assert messages["outside.yaml"].startswith("links to /etc/hostname, outside")
    assert messages["adir.yaml"] == "not a regular file (a directory)"
    assert messages["pipe.yaml"] == "not a regular file (a named pipe)"
    assert any("duplicate id 'linked'" in str(e) and "alias.yaml" in str(e) and "sub.yml" in str(e)
               for e in result.errors)


def test_duplicate_ids_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text("# comment\n" + GOOD)
    [error] = load_directory(tmp_path).errors
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert str(error) == f"{second}:2 [id]: duplicate id 'good': {first} already defines it (that one is used)"


def test_versions_stay_as_written_and_adapters_are_checked_at_load() -> None:
    assert parse_persona(Path("p.yaml"), GOOD + "version: 1.10\n").version == "1.10"
    root = REPO / "adapters"
    for adapter, why in [
        ("adapters/missing", "adapter directory 'adapters/missing' not found"),
        ("../../../../etc", "is outside the adapters directory"),
        ("/", "is outside the adapters directory"),
        ("file:///etc/passwd", "not a URL"),
        ("adapters", "is outside the adapters directory"),
    ]:
        [problem] = problems(GOOD + f"adapter: {adapter}\n", adapters_root=root)
        assert problem.startswith("p.yaml:4:10 [adapter]: ") and why in problem, problem
    assert parse_persona(Path("p.yaml"), GOOD + "adapter: adapters/captain-lora\n", adapters_root=root).adapter


def test_shipped_personas_load_cleanly() -> None:
    # Load time is measured in BENCHMARKS.md, not asserted here.
    result = load_directory(REPO / "personas", adapters_root=REPO / "adapters")
    assert result.errors == [] and len(result.personas) >= 5


# -- templates ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "offset", "words"),
    [
        ("today is {date:%Y}", 9, "format specs"),
        ("{user_name:{channel}}", 0, "nested placeholder"),
        ("{user_name:>300000000}", 0, "format specs"),
        ("hi {user_name!r}", 3, "conversions"),
        ("{user_name.upper}", 0, "attribute and index access"),
        ("{user_name[0]}", 0, "attribute and index access"),
        ("{}", 0, "empty placeholder"),
        ("{0}", 0, "not a placeholder"),
        ("a } b", 2, "single '}'"),
        ("a { b", 2, "never closed"),
        ("{{ok}} {nope}", 7, "unknown variable"),
    ],
)
def test_templates_allow_only_bare_known_names(template: str, offset: int, words: str) -> None:
    with pytest.raises(TemplateError, match=words) as info:
        check_template(template, PROMPT_VARIABLES)
    assert info.value.offset == offset


def test_rendering_never_raises_and_escapes_work() -> None:
    persona = Persona(id="p", name="P", system_prompt="{{literal}} {user_name}")
    context = PromptContext(user_name="{date}")  # a value is never parsed again
    assert render(persona.system_prompt, persona, context) == "{literal} {date}"
    assert render("{date:%Y} {x", persona, context) == "{date:%Y} {x"  # unvalidated: shown as written


# -- personas check ----------------------------------------------------------------------------------


def make_adapters(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    shutil.copytree(REPO / "adapters", root)
    return root


def edit_config(path: Path, **changes: object) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def test_personas_check_validates_adapters_as_start_up_does(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    root = make_adapters(tmp_path)
    edit_config(root / "captain-lora", base_model_name_or_path="https://evil.example/SmolLM2-135M-Instruct")
    shutil.copytree(root / "captain-soft", root / "narrow")
    edit_config(root / "narrow", token_dim=512)
    shutil.copytree(root / "captain-soft", root / "wide")
    save_file({"prompt_embeddings": torch.zeros(16, 960)}, str(root / "wide" / "adapter_model.safetensors"))
    personas = tmp_path / "personas"
    personas.mkdir()
    for name in ("lora", "narrow", "wide", "captain-soft"):
        adapter = root / ("captain-lora" if name == "lora" else name)
        backend = "openai" if name == "captain-soft" else "local"
        (personas / f"{name}.yaml").write_text(
            f"id: {name}\nname: N\nsystem_prompt: x\nadapter: {adapter}\nmodel: {{backend: {backend}}}\n")
    settings = Settings(personas_dir=personas, adapters_dir=root, data_dir=REPO / ".cache" / "test-data",
                        _env_file=None)  # type: ignore[call-arg]
    report = check_personas(settings)
    by_file = {Path(str(p.path)).stem: str(p) for p in report.problems}
    assert "trained for base model 'https://evil.example/SmolLM2-135M-Instruct'" in by_file["lora"]
    assert "token_dim=512, but the model's hidden size (and the saved tensor's width) is 576" in by_file["narrow"]
    assert "soft prompt embedding size 960 (the saved tensor's width) != the model's hidden size 576" in by_file["wide"]
    assert "soft prompts cannot be served by an OpenAI-compatible server" in by_file["captain-soft"]
    assert all(":4:10 [adapter]: " in p for p in by_file.values()), by_file
    assert not report.ok and report.notes == []


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    environ.update(COLUMNS="80", **env)
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, cwd=REPO,
                          env=environ, timeout=120)


def test_personas_check_cli_is_plain_and_untruncated_off_a_terminal_and_speaks_json(tmp_path: Path) -> None:
    personas = tmp_path / "a-rather-long-directory-name-for-personas-to-overflow-80-columns"
    shutil.copytree(REPO / "personas", personas)
    (personas / "broken.yaml").write_text(GOOD.replace("good", "broken") + "adapter: ../../../../etc\n")
    table = run_cli(["personas", "check", str(personas)])
    assert table.returncode == 1
    assert f"{personas / 'captain-lora.yaml'}" in table.stdout and "captain-soft" in table.stdout
    assert "…" not in table.stdout and "\x1b" not in table.stdout + table.stderr
    assert f"{personas / 'broken.yaml'}:4:10 [adapter]: adapter '../../../../etc' is outside" in table.stderr
    report = json.loads(run_cli(["personas", "check", str(personas), "--format", "json"]).stdout)
    assert report["ok"] is False and {p["id"] for p in report["personas"]} >= {"captain", "terse"}
    assert report["problems"] == [{"file": str(personas / "broken.yaml"), "line": 4, "column": 10, "field": "adapter",
                                   "message": "adapter '../../../../etc' is outside the adapters directory adapters "
                                              "(BOT_ADAPTERS_DIR)"}]


# -- settings and output paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"BOT_MODEL__BACKEND": "bogus"}, "error: invalid setting BOT_MODEL__BACKEND: Input should be 'local', "
                                          "'openai' or 'scripted' (got 'bogus')"),
        ({"BOT_DISCORD__ALWAYS_ANSWER_CHANNELS": "[1,2"}, "error: invalid setting BOT_DISCORD__ALWAYS_ANSWER_CHANNELS: "
                                                          "not valid JSON"),
        ({"BOT_REDIS__URL": "localhost:6379"}, "error: invalid setting BOT_REDIS__URL: must start with redis://"),
        ({"BOT_MEMORY__MAX_TURNS": "-1"}, "error: invalid setting BOT_MEMORY__MAX_TURNS: Input should be greater"),
    ],
)
@pytest.mark.parametrize("command", [["personas", "check"], ["feedback", "report"], ["chat"]])
def test_invalid_settings_are_one_line_and_exit_2_for_every_command(
    env: dict[str, str], line: str, command: list[str]
) -> None:
    result = run_cli(command, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_in_invalid_settings_are_not_shown() -> None:
    result = run_cli(["chat"], BOT_REDIS__URL="http://user:hunter2@host")
    assert result.returncode == 2 and "hunter2" not in result.stderr


def test_unwritable_output_paths_are_one_line(tmp_path: Path) -> None:
    env = {"BOT_DATA_DIR": str(tmp_path / "d"), "BOT_MODEL__BACKEND": "scripted"}
    export = run_cli(["feedback", "export", "-o", "/nonexistent/x.jsonl"], **env)
    assert (export.returncode, export.stderr) == (
        2, "error: cannot write --out /nonexistent/x.jsonl: directory /nonexistent does not exist\n")
    report = run_cli(["feedback", "report", "--html", str(tmp_path)], **env)
    assert (report.returncode, report.stderr) == (2, f"error: cannot write --html {tmp_path}: it is a directory\n")


# -- text the engine and console take ----------------------------------------------------------------


def test_terminal_filter_removes_sequences_even_across_chunks() -> None:
    assert terminal_safe("a\x1b[31mred\x1b[0m \x1b]0;title\x07b\x9b2Jc\x00\r") == "ared bc"
    f = TerminalFilter()
    shown = "".join(f.feed(c) for c in ["x\x1b", "[2", "Jy\x1b]8;;http://e", "vil\x07z"]) + f.flush()
    assert shown == "xyz"
    assert valid_text("caf\udce9") == "caf\ufffd"


async def test_lone_surrogates_are_replaced_before_the_reply_and_stored(settings: Settings) -> None:
    async with build_runtime(settings) as rt:
        request = ChatRequest("c", Speaker("u", "Sam\udcff"), "hello \udce9 there", channel_name="x\ud800")
        finished = await rt.engine.reply(request)
        assert finished.text == "[Ada] You said: hello \ufffd there"
        [user_turn, _] = await rt.memory.load("c", 1)
        assert user_turn.content == "hello \ufffd there"
        assert (await rt.feedback.get(finished.reply_id)) is not None


async def test_console_strips_escapes_from_echo_and_output_and_stores_the_reply(settings: Settings) -> None:
    out = io.StringIO()
    stdin = io.StringIO("hi \x1b[2J\x1b]0;pwned\x07there \udce9\n/good\n")
    async with build_runtime(settings) as rt:
        await run_console(rt.engine, "assistant", user_name="Sam", conversation="esc", stdin=stdin, out=out)
        rated = [r async for r in rt.feedback.iter_rated()]
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "Sam> hi there \ufffd\nAda> [Ada] You said: hi \x1b[2J" not in text
    assert "Sam> hi there \ufffd\n" in text, text  # the echo, without the sequences
    assert "Ada> [Ada] You said: hi there \ufffd\n" in text, text  # the model's echo of them, stripped too
    assert len(rated) == 1, "the reply shown was stored and could be rated"


# -- eval suites and training data ------------------------------------------------------------------------


def test_regex_assertions_give_up_instead_of_hanging() -> None:
    # `regex` handles the textbook (a+)+b; this one still backtracks exponentially.
    result = check_regex(Regex(type="regex", pattern="(a|aa)+$"), "a" * 40 + "b", timeout=0.2)
    assert not result.passed and "gave up after 0.2 s" in result.detail


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("cases:\n  - name: caf\xe9\n".encode("latin-1"), ":2:14: not valid UTF-8"),
        (b"cases: " + b"[" * 100 + b"]" * 100, "nested more than 24 levels"),
        (b"cases:\n  - name: a\n    input: hi\n    assertions: [{type: regex, pattern: '(('}]\n",
         ":4:41 [cases.0.assertions.0.regex.pattern]: invalid regular expression"),
    ],
)
def test_broken_suite_files_are_one_located_line(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "captain.yaml").write_bytes(content)
    with pytest.raises(PersonaFileProblems) as info:
        load_suite(tmp_path, "captain")
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_training_lines_over_the_limit_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]})
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]})
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n{huge}\n{good}\n")
    examples, source = load_jsonl(path, max_line_bytes=1000)
    assert len(examples) == 2 and source.examples == 2
    assert f"{path}:2: example of 5,0" in caplog.text and "skipped" in caplog.text
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    from bot.training.errors import TrainingError

    with pytest.raises(TrainingError, match=r"deep.jsonl:1: invalid JSON"):
        load_jsonl(deep, max_line_bytes=1_000_000)
