"""The command line as a careless admin meets it: every failure is one line with a meaningful exit
code (2: bad usage or settings), output files are written whole, start-up imports stay light, and
Ctrl-C at the console's prompt ends the chat at once. Mostly in-process (`bot.cli.main`), so cheap."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.cli import main
from bot.cli_common import output_file
from bot.settings import Settings
from tests.conftest import REPO


def run_main(args: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(args)
    code = done.value.code
    return code if isinstance(code, int) else 0


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no BOT_* variables, no .env, the shipped personas, data under tmp_path."""
    for name in [n for n in os.environ if n.startswith("BOT_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_PERSONAS_DIR", str(REPO / "personas"))
    monkeypatch.setenv("BOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "No such option: --bogus (see: python -m bot --help)"),
        (["nosuchcommand"], "No such command 'nosuchcommand' (see: python -m bot --help)"),
        (["chat", "extra"], "unexpected extra argument"),
        (["feedback", "export", "--format", "xml"], "choose one of jsonl, sft, kto, dpo"),
        (["eval", "--threshold", "2"], "--threshold"),
        (["personas", "check", "README.md"], "README.md: not a directory of persona files"),
        (["train", "lora", "--persona", "captain", "--out", "README.md"], "it is a file, not a directory"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    (cli_env / "README.md").write_text("not a directory")
    assert run_main(args) == 2
    assert says in one_error_line(capsys)


def test_a_group_without_a_command_shows_its_help(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["redis"]) == 2
    out = capsys.readouterr().out
    assert "status" in out and "stop" in out


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BOT_LOG_LEVEL": "LOUD"}, "BOT_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ({"BOT_DISCORD__SHARD_IDS": "[5]"}, "BOT_DISCORD__SHARD_IDS: needs BOT_DISCORD__SHARD_COUNT"),
        ({"BOT_DISCORD__SHARD_IDS": "[5]", "BOT_DISCORD__SHARD_COUNT": "2"},
         "BOT_DISCORD__SHARD_IDS: must be distinct ids from 0 to 1"),
        ({"BOT_DISCORD__SHARD_IDS": "[0,", "BOT_DISCORD__SHARD_COUNT": "2"},
         "BOT_DISCORD__SHARD_IDS: not a JSON list; lists are written like [1, 2]"),
    ],
)
def test_bad_settings_name_their_variable(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_main(["discord"]) == 2
    assert one_error_line(capsys).startswith(f"error: invalid setting {says}")


def test_log_level_is_case_insensitive() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"


def test_missing_places_are_one_line_before_anything_starts(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOT_PERSONAS_DIR", str(cli_env / "nowhere"))
    assert run_main(["chat"]) == 2
    assert one_error_line(capsys).endswith("does not exist (BOT_PERSONAS_DIR)")

    monkeypatch.setenv("BOT_PERSONAS_DIR", str(REPO / "personas"))
    assert run_main(["chat", "--persona", "ghost"]) == 1  # refused before Redis or the model start
    assert "no persona 'ghost' (known: assistant" in one_error_line(capsys)
    assert not (cli_env / "data").exists()

    (cli_env / "file").write_text("")
    monkeypatch.setenv("BOT_DATA_DIR", str(cli_env / "file"))
    assert run_main(["redis", "status"]) == 1
    assert "cannot create the data directory" in one_error_line(capsys)

    monkeypatch.delenv("BOT_DATA_DIR")
    monkeypatch.setenv("BOT_REDIS__URL", "redis://127.0.0.1:1/0")
    assert run_main(["redis", "stop"]) == 2
    assert "Redis is not embedded" in one_error_line(capsys)


def test_output_files_are_written_whole_and_devices_are_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), output_file(target) as out:
        out.write("half a")
        raise RuntimeError("the export failed")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]

    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with output_file(link) as out:
        out.write("new\n")
    assert link.is_symlink() and target.read_text() == "new\n"

    with output_file(Path(os.devnull)) as out:  # never renamed over: /dev/null stays a device
        out.write("gone\n")
    assert Path(os.devnull).is_char_device()


def test_help_and_personas_check_import_no_heavy_library() -> None:
    heavy = ("torch", "transformers", "langchain_core", "discord", "redis", "pydantic_settings")
    code = (f"import sys, bot.cli; print([m for m in {heavy!r} if m in sys.modules]); "
            f"import bot.personas.check; print([m for m in {heavy[:-1]!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.split() == ["[]", "[]"], result.stdout + result.stderr


def test_console_input_never_holds_up_the_exit() -> None:
    """A readline blocked on a terminal (the user is not typing) must not keep Ctrl-C waiting for Enter."""
    from bot.transports.console import _lines

    class Silent(io.TextIOBase):
        def readline(self, size: int | None = -1) -> str:
            threading.Event().wait(60)
            return ""

    async def read_then_give_up() -> None:
        lines = _lines(Silent())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(lines), 0.2)

    finished = threading.Event()
    worker = threading.Thread(target=lambda: (asyncio.run(read_then_give_up()), finished.set()), daemon=True)
    worker.start()
    assert finished.wait(10), "asyncio.run waited for the blocked readline"


def test_a_broken_list_in_dotenv_names_its_variable(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cli_env / ".env").write_text("BOT_DISCORD__ADMIN_ROLE_IDS=abc\n")
    assert run_main(["config"]) == 2
    assert one_error_line(capsys).startswith("error: invalid setting BOT_DISCORD__ADMIN_ROLE_IDS: not valid JSON")
