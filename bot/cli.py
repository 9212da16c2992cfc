"""`python -m bot ...`: the command line. Each command builds what it needs from `Settings`."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bot.cli_cards import export_command, import_command, import_lorebook_command
from bot.cli_feedback import eval_command, feedback_app
from bot.cli_redis import redis_app
from bot.cli_refine import refine_app
from bot.cli_train import train_app
from bot.errors import BotError
from bot.settings import Settings, describe_settings_error

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Persona chat bots: console, Discord, feedback.")
personas_app = typer.Typer(no_args_is_help=True, help="Inspect and validate persona files.")
app.add_typer(personas_app, name="personas")
personas_app.command("import")(import_command)
personas_app.command("export")(export_command)
personas_app.command("import-lorebook")(import_lorebook_command)
app.add_typer(feedback_app, name="feedback")
app.command("eval")(eval_command)
app.add_typer(train_app, name="train")
app.add_typer(refine_app, name="refine")
app.add_typer(redis_app, name="redis")

err = Console(stderr=True)


EXIT_CONFIG = 2  # settings unusable: nothing was started


def settings() -> Settings:
    """The settings, or one line per invalid setting naming its variable and exit code 2."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        loaded = Settings()
    except (ValidationError, SettingsError) as exc:
        _settings_failed(exc)
    logging.basicConfig(
        level=loaded.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return loaded


def _settings_failed(exc: Exception) -> NoReturn:
    for line in describe_settings_error(exc):
        err.print(f"[red]error:[/red] invalid setting {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_CONFIG)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command; a BotError becomes one clear line on stderr and exit code 1."""
    try:
        return asyncio.run(coro)
    except BotError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def chat(
    persona: Annotated[str | None, typer.Option("--persona", "-p", help="Persona id (default: settings).")] = None,
) -> None:
    """Chat in the terminal (stdin may be a pipe: one message a line)."""
    from bot.models.provider import DefaultModelProvider

    cfg = settings()
    # The local model loads on a thread while everything else starts (imports, Redis, personas).
    provider = DefaultModelProvider(cfg.model, cfg.data_dir, adapters_dir=cfg.adapters_dir)
    if cfg.model.backend == "local":
        provider.start_loading()
    from bot.app import build_runtime
    from bot.transports.console import run_console

    async def main() -> None:
        try:
            async with build_runtime(cfg, model_provider=provider) as runtime:
                persona_id = persona or cfg.default_persona
                runtime.personas.get(persona_id)  # fail early with the list of known personas
                await run_console(runtime.engine, persona_id, user_name=cfg.console.user_name,
                                  conversation=cfg.console.conversation, stdin=sys.stdin, out=sys.stdout)
        finally:
            provider.close()

    run_async(main())


@app.command()
def discord() -> None:
    """Run the Discord bot (token: BOT_DISCORD__TOKEN)."""
    from bot.transports.discord import run

    run_async(run(settings()))


@app.command()
def config(markdown: Annotated[bool, typer.Option(help="Print the README's Markdown table.")] = False) -> None:
    """Show every setting: environment variable, default and (with the current environment) value."""
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


@personas_app.command("check")
def personas_check(
    directory: Annotated[Path | None, typer.Argument(help="Default: settings.personas_dir")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table (default) or json (for tools).")] = "table",
) -> None:
    """Validate persona files and their adapters as start-up would; exit 1 on any problem."""
    from bot.personas.check import check_personas

    if fmt not in ("table", "json"):
        raise typer.BadParameter("choose table or json", param_hint="--format")
    report = check_personas(settings(), directory)
    if fmt == "json":
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_check(report)
    if not report.ok:
        raise typer.Exit(1)


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
        from bot.evals.table import render_table

        print(f"Personas in {report.directory}")
        print(render_table(headers, rows))
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        err.print(f"[red]✗[/red] {escape(str(problem))}", highlight=False, soft_wrap=True)
    print(f"{len(report.rows)} persona(s), {len(report.problems)} problem(s)")


def main() -> None:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        app()
    except (ValidationError, SettingsError) as exc:  # a command that read Settings() on its own
        try:
            _settings_failed(exc)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
