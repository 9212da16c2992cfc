"""What every `python -m bot` command shares: settings read with one-line errors, running a coroutine,
output paths checked before any work and written whole, and the exit codes.

Exit codes: 0 done, 1 the command failed (Redis unreachable, a broken file, tests below threshold),
2 bad usage or settings (nothing was started), 130 interrupted (Ctrl-C).

Kept light on purpose: `python -m bot --help` imports this module, so pydantic, redis, torch and
friends are imported inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from bot.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2  # bad arguments or settings: nothing was started
EXIT_INTERRUPTED = 130

err = Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print `error: message` on one line of stderr and exit with `code`."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    """The settings, or one line per invalid setting naming its variable and exit code 2."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from bot.settings import Settings

    try:
        loaded = Settings()
    except (ValidationError, SettingsError) as exc:
        settings_failed(exc)
    logging.basicConfig(
        level=loaded.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return loaded


def settings_failed(exc: Exception) -> NoReturn:
    from bot.settings import describe_settings_error

    for line in describe_settings_error(exc):
        err.print(f"[red]error:[/red] invalid setting {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command; a BotError becomes one clear line on stderr and exit code 1."""
    from bot.errors import BotError

    try:
        return asyncio.run(coro)
    except BotError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        interrupted()


def interrupted() -> NoReturn:
    err.print("interrupted", highlight=False)
    raise typer.Exit(EXIT_INTERRUPTED)


def check_output(path: Path | None, option: str) -> None:
    """Exit with one line (code 2) before any work when `path` cannot be written."""
    if path is None or str(path) == "-":
        return
    parent = path.parent if str(path.parent) else Path(".")
    why = None
    if path.is_dir():
        why = "it is a directory"
    elif not parent.is_dir():
        why = f"directory {parent} does not exist"
    elif not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        why = "permission denied"
    if why is not None:
        fail(f"cannot write {option} {path}: {why}", EXIT_USAGE)


@contextmanager
def output_file(path: Path) -> Iterator[TextIO]:
    """A text file written whole or not at all: a temp file beside `path`, renamed over it when the
    block ends without an error (and removed when it fails or is interrupted). A symlink's target is
    replaced, not the link; a device or pipe (/dev/stdout, a FIFO) is written straight into."""
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        with target.open("w", encoding="utf-8") as stream:
            yield stream
        return
    directory = target.parent if str(target.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            yield file
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write a result file whole, or exit with one line (code 1) saying why it cannot be written."""
    try:
        with output_file(path) as file:
            file.write(text)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
