"""`python -m bot ...`: the command line. Each command builds what it needs from `Settings`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

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
from bot.settings import Settings

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


def settings() -> Settings:
    loaded = Settings()
    logging.basicConfig(
        level=loaded.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return loaded


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
    from bot.app import build_runtime
    from bot.transports.console import run_console

    cfg = settings()

    async def main() -> None:
        async with build_runtime(cfg) as runtime:
            persona_id = persona or cfg.default_persona
            runtime.personas.get(persona_id)  # fail early with the list of known personas
            await run_console(runtime.engine, persona_id, user_name=cfg.console.user_name,
                              conversation=cfg.console.conversation, stdin=sys.stdin, out=sys.stdout)

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
) -> None:
    """Validate persona files and print a table; exit 1 if any file is broken."""
    from bot.personas.loader import load_directory

    cfg = settings()
    result = load_directory(directory or cfg.personas_dir)
    table = Table(title=f"Personas in {directory or cfg.personas_dir}")
    for column in ("id", "name", "version", "backend", "adapter", "examples", "file"):
        table.add_column(column)
    for pid, p in sorted(result.personas.items()):
        table.add_row(pid, p.name, p.version, p.model.backend or f"{cfg.model.backend} (default)",
                      p.adapter or "-", str(len(p.examples)), str(result.sources[pid]))
    Console().print(table)
    for error in result.errors:
        err.print(f"[red]✗[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(1)


def main() -> None:
    app()
