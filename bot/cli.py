"""`python -m bot ...`: the command line. Each command builds what it needs from `Settings`.

Start-up stays quick: this module and the command modules it mounts import only typer and rich at
load time; each command imports the heavy parts (pydantic, redis, torch, transformers, langchain,
discord.py) when it runs. `main()` is the one error sink: whatever a command lets escape becomes one
line on stderr with an exit code from bot.cli_common (2 for bad usage and settings).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bot.cli_cards import export_command, import_command, import_lorebook_command
from bot.cli_common import EXIT_USAGE, err, fail, interrupted, run_async, settings, settings_failed
from bot.cli_feedback import eval_command, feedback_app
from bot.cli_redis import redis_app
from bot.cli_refine import refine_app
from bot.cli_train import train_app

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = ["EXIT_CONFIG", "app", "err", "main", "run_async", "settings"]

EXIT_CONFIG = EXIT_USAGE  # settings unusable: nothing was started

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Persona chat bots: chat in the terminal or on Discord, rate replies, then report, test, refine and "
    "train the personas. Settings come from BOT_* environment variables or .env (see `config`).",
)
personas_app = typer.Typer(no_args_is_help=True, help="Check, import and export persona files.")


@app.command()
def chat(
    persona: Annotated[
        str | None, typer.Option("--persona", "-p", help="Persona id (default: BOT_DEFAULT_PERSONA).")
    ] = None,
) -> None:
    """Chat in the terminal (stdin may be a pipe: one message a line). /help lists the chat commands."""
    cfg = settings()
    if sys.stdin is None:
        fail("no input to chat from: stdin is closed", EXIT_USAGE)
    persona_id = persona or cfg.default_persona
    require_persona(cfg, persona_id)  # before the model loads: a typo fails in a second, not ten
    if sys.stdin.isatty():
        err.print("[dim]starting Redis and loading the model…[/dim]", highlight=False)
    from bot.models.provider import DefaultModelProvider

    # The local model loads on a thread while everything else starts (imports, Redis, personas).
    provider = DefaultModelProvider(cfg.model, cfg.data_dir, adapters_dir=cfg.adapters_dir)
    if cfg.model.backend == "local":
        provider.start_loading()

    async def main() -> None:
        from bot.app import build_runtime
        from bot.transports.console import run_console

        try:
            async with build_runtime(cfg, model_provider=provider) as runtime:
                runtime.personas.get(persona_id)
                await run_console(runtime.engine, persona_id, user_name=cfg.console.user_name,
                                  conversation=cfg.console.conversation, stdin=sys.stdin, out=sys.stdout)
        finally:
            provider.close()

    run_async(main())


@app.command()
def discord() -> None:
    """Run the Discord bot (token: BOT_DISCORD__TOKEN; see the README's Discord section)."""
    cfg = settings()
    if cfg.discord.token is None or not cfg.discord.token.get_secret_value().strip():
        fail("no Discord bot token: set BOT_DISCORD__TOKEN (Developer Portal → your app → Bot → Reset Token)",
             EXIT_USAGE)
    if not cfg.personas_dir.is_dir():  # a broken default persona does not stop it: the others keep working
        fail(f"persona directory {cfg.personas_dir} does not exist (BOT_PERSONAS_DIR)", EXIT_USAGE)
    if "log_level" not in cfg.model_fields_set:  # say what start-up is doing, not every message after
        for name in ("bot.transports.discord.runner", "bot.transports.discord.client"):
            logging.getLogger(name).setLevel(logging.INFO)
    from bot.transports.discord import run

    run_async(run(cfg))


@app.command()
def config(markdown: Annotated[bool, typer.Option(help="Print the README's Markdown table.")] = False) -> None:
    """Show every setting: environment variable, current value (secrets masked) and meaning."""
    from bot.settings import setting_rows

    if markdown:
        print("| Environment variable | Default | Meaning |\n|---|---|---|")
        for env, default, description in setting_rows():
            print(f"| `{env}` | `{default}` | {description} |")
        return
    current = settings().model_dump(mode="json")
    table = Table(title="Settings (secrets masked)")
    for column in ("variable", "value", "meaning"):
        table.add_column(column)
    for env, _, description in setting_rows():
        value: object = current
        for part in env.removeprefix("BOT_").lower().split("__"):
            value = value.get(part) if isinstance(value, dict) else None
        table.add_row(env, str(value), description)
    Console().print(table)


app.command("eval")(eval_command)
app.add_typer(personas_app, name="personas")
app.add_typer(feedback_app, name="feedback")
app.add_typer(train_app, name="train")
app.add_typer(refine_app, name="refine")
app.add_typer(redis_app, name="redis")


@personas_app.command("check")
def personas_check(
    directory: Annotated[
        Path | None, typer.Argument(help="A directory of persona files (default: BOT_PERSONAS_DIR).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table (default) or json (for tools).")] = "table",
) -> None:
    """Validate persona files and their adapters as start-up would; exit 1 on any problem."""
    from bot.personas.check import check_personas

    if fmt not in ("table", "json"):
        raise typer.BadParameter("choose table or json", param_hint="--format")
    cfg = settings()
    if directory is not None and not directory.is_dir():
        fail(f"{directory}: not a directory of persona files", EXIT_USAGE)
    report = check_personas(cfg, directory)
    if fmt == "json":
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_check(report)
    if not report.ok:
        raise typer.Exit(1)


personas_app.command("import")(import_command)
personas_app.command("export")(export_command)
personas_app.command("import-lorebook")(import_lorebook_command)


def require_persona(cfg: Settings, persona_id: str) -> None:
    """Exit with one line when the personas directory is missing (2) or `persona_id` is not in it (1),
    naming its file's problem when that file is broken. Reads the files only: no model, no Redis."""
    from bot.personas.loader import load_directory

    if not cfg.personas_dir.is_dir():
        fail(f"persona directory {cfg.personas_dir} does not exist (BOT_PERSONAS_DIR)", EXIT_USAGE)
    loaded = load_directory(cfg.personas_dir)
    if persona_id in loaded.personas:
        return
    broken = [e for e in loaded.errors if Path(getattr(e, "path", "")).stem == persona_id]
    if broken:
        fail(f"persona {persona_id!r} cannot be loaded: {broken[0]}")
    fail(f"no persona {persona_id!r} (known: {', '.join(sorted(loaded.personas)) or 'none'})")


def _print_check(report: Any) -> None:
    """A rich table on a terminal; plain, untruncated lines anywhere else (CI logs, pipes)."""
    headers = ("id", "name", "version", "backend", "adapter", "examples", "file", "status")
    rows = [[str(v) for v in row.to_dict().values()] for row in report.rows]
    if sys.stdout.isatty():
        table = Table(title=f"Personas in {report.directory}")
        for column in headers:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(v) for v in row))
        Console().print(table)
    else:
        from bot.domain.table import render_table

        print(f"Personas in {report.directory}")
        print(render_table(headers, rows))
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        err.print(f"[red]✗[/red] {escape(str(problem))}", highlight=False, soft_wrap=True)
    print(f"{len(report.rows)} persona(s), {len(report.problems)} problem(s)")


def main(args: list[str] | None = None) -> None:
    """`python -m bot`: run `app`, turning whatever escapes a command into one line and an exit code."""
    sys.exit(_run(args))


def _run(args: list[str] | None) -> int:
    from bot.errors import BotError

    command = typer.main.get_command(app)
    try:
        try:
            result = command.main(args=args, prog_name="python -m bot", standalone_mode=False)
        except (typer.Abort, KeyboardInterrupt):
            interrupted()
        except BotError as exc:
            fail(str(exc))
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `... | head` closed the pipe: not an error worth a line
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no complaint at exit
                return 1
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")
        except Exception as exc:
            if _is_settings_error(exc):  # a command that read Settings() on its own
                settings_failed(exc)
            kinds = {kind.__name__ for kind in type(exc).__mro__}
            if "NoArgsIsHelpError" in kinds:  # `python -m bot personas`: the group's help
                help_text = exc.format_message()  # type: ignore[attr-defined]  # rich help printed itself: ""
                if help_text.strip():
                    typer.echo(help_text)
                return EXIT_USAGE
            if "UsageError" in kinds:
                _usage_failed(exc)
            if "ClickException" in kinds:
                fail(exc.format_message(), exc.exit_code)  # type: ignore[attr-defined]
            # A bug: one line here, the traceback with BOT_LOG_LEVEL=DEBUG.
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                logging.getLogger(__name__).exception("unexpected error")
            fail(f"unexpected {type(exc).__name__}: {exc} (BOT_LOG_LEVEL=DEBUG shows the traceback)")
    except typer.Exit as done:
        return int(done.exit_code)
    return result if isinstance(result, int) else 0


def _is_settings_error(exc: Exception) -> bool:
    """A pydantic settings error, without importing pydantic when no command did."""
    kinds = [getattr(sys.modules.get(module), name, None) for module, name in
             (("pydantic", "ValidationError"), ("pydantic_settings", "SettingsError"))]
    return any(isinstance(kind, type) and isinstance(exc, kind) for kind in kinds)


def _usage_failed(exc: Exception) -> None:
    """Usage errors on one line, with where to read more (instead of click's boxed three). Click's
    exception classes are matched by name: typer vendors click, and its copy is private."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "python -m bot"
    message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
    fail(f"{message} (see: {path} --help)", EXIT_USAGE)
