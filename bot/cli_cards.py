"""`python -m bot personas import|export|import-lorebook`: Character Card V2/V3 files <-> personas.

Mounted by bot.cli on its `personas` group. Helpers of bot.cli (settings(), err) are imported inside
the commands: bot.cli imports this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape


def _fail(exc: Exception) -> typer.Exit:
    from bot.cli import err

    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _personas_dir(directory: Path | None) -> Path:
    from bot.cli import settings

    return directory or settings().personas_dir


DirOption = Annotated[Path | None, typer.Option("--dir", help="Personas directory (default: settings.personas_dir).")]


def import_command(
    file: Annotated[Path, typer.Argument(help="A card: .json, .png (chara/ccv3 chunk) or .charx.")],
    persona_id: Annotated[str | None, typer.Option("--id", help="Persona id (default: from the name).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a persona with the same id.")] = False,
    keep_unknown_macros: Annotated[
        bool, typer.Option(help="Keep macros this bot cannot map ({{random:...}}...) as literal text.")
    ] = False,
    directory: DirOption = None,
) -> None:
    """Import a Character Card V2/V3 as a persona file (plus its avatar and assets)."""
    from bot.cards import CardError, import_card

    try:
        result = import_card(file, _personas_dir(directory), persona_id=persona_id, force=force,
                             keep_unknown_macros=keep_unknown_macros)
    except CardError as exc:
        raise _fail(exc) from None
    persona = result.persona
    books = sum(len(s.book.entries) for s in persona.lore_sources)
    print(f"imported {persona.name!r} as persona {persona.id!r}: {result.path}")
    group = f" (+{len(persona.group_greetings)} for shared channels)" if persona.group_greetings else ""
    print(f"  greetings: {int(persona.greeting is not None) + len(persona.alternate_greetings)}{group}, "
          f"examples: {len(persona.examples)}, lorebook entries: {books}, assets: {len(result.assets)}"
          + (f", avatar: {persona.identity.avatar_path}" if persona.identity and persona.identity.avatar_path else ""))
    if result.lorebook is not None:
        print(f"  the card's lorebook is too large for the persona file: it is {result.lorebook} "
              f"(listed in the persona's `lorebooks:`)")
    for warning in result.warnings:
        print(f"  warning: {warning}", file=sys.stderr)


def export_command(
    persona_id: Annotated[str, typer.Argument(help="The persona to export.")],
    fmt: Annotated[str, typer.Option("--format", help="card-v2 or card-v3.")] = "card-v3",
    png: Annotated[bool, typer.Option("--png", help="A PNG card (the avatar image) instead of JSON.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write ('-': JSON to stdout).")] = None,
    directory: DirOption = None,
) -> None:
    """Export a persona as a Character Card V2/V3 (JSON, or PNG with --png)."""
    from bot.cards import CardError, export_card
    from bot.personas.loader import load_directory

    if fmt not in ("card-v2", "card-v3"):
        raise _fail(ValueError(f"--format {fmt!r}: card-v2 or card-v3"))
    personas_dir = _personas_dir(directory)
    loaded = load_directory(personas_dir)
    persona = loaded.personas.get(persona_id)
    if persona is None:
        broken = [e for e in loaded.errors if f"{persona_id}.y" in str(e.path)]
        reason = f": {broken[0]}" if broken else f" (known: {', '.join(sorted(loaded.personas)) or 'none'})"
        raise _fail(ValueError(f"no persona {persona_id!r}{reason}"))
    try:
        data, name, warnings = export_card(persona, personas_dir, v3=fmt == "card-v3", png_file=png)
    except CardError as exc:
        raise _fail(exc) from None
    if output == Path("-") and not png:
        sys.stdout.write(data.decode("utf-8") + "\n")
    else:
        target = output or Path(name)
        target.write_bytes(data)
        print(f"exported persona {persona.id!r} as {fmt}{' PNG' if png else ''}: {target}")
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)


def import_lorebook_command(
    file: Annotated[Path, typer.Argument(
        help="lorebook_v3 JSON, SillyTavern world info, a card's character_book, or a card JSON (its book).")],
    name: Annotated[str | None, typer.Option(help="Lorebook name (default: from its name or file).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a lorebook with the same name.")] = False,
    keep_unknown_macros: Annotated[bool, typer.Option(help="Keep unknown macros as literal text.")] = False,
    directory: DirOption = None,
) -> None:
    """Import a lorebook file as personas/lorebooks/NAME.yaml (personas use it with `lorebooks: [NAME]`)."""
    from bot.cards import CardError, import_lorebook

    warnings: list[str] = []
    try:
        path, book = import_lorebook(file, _personas_dir(directory), name=name, force=force,
                                     keep_unknown_macros=keep_unknown_macros, warnings=warnings)
    except CardError as exc:
        raise _fail(exc) from None
    print(f"imported lorebook {path.stem!r} ({len(book.entries)} entries): {path}")
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
