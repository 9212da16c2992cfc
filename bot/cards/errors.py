"""Errors of card import and export. Each names the file and, where it can, the card field.

    CardError (BotError)          .source (the file), .field (e.g. "data.character_book.entries.3.keys")
    ├── CardFormatError           not a readable card: bad JSON, PNG, zip or base64, wrong spec, wrong types
    ├── CardLimitError            over a documented limit: size, nesting, counts, a zip bomb
    ├── CardMacroError            macros this bot cannot map ({{#if}}, {{calc::...}}...): .macros
    └── CardConflict              the persona (or its assets) exists already: import with --force

An import that raises has written nothing; one that returns has written everything.
"""

from __future__ import annotations

from pathlib import Path

from bot.errors import BotError


class CardError(BotError):
    def __init__(self, message: str, *, source: Path | str | None = None, field: str | None = None) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = f"{source}: " if source is not None else ""
        what = f"[{field}] " if field else ""
        super().__init__(f"{where}{what}{message}")

    def at(self, source: Path | str) -> CardError:
        """The same error, naming the file (raised deep down, the file is known at the top)."""
        if self.source is not None:
            return self
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        CardError.__init__(clone, self.message, source=source, field=self.field)
        return clone


class CardFormatError(CardError):
    """Not a card this bot can read."""


class CardLimitError(CardError):
    """The card is over one of the documented limits (bot.cards.limits)."""


class CardMacroError(CardError):
    """Macros with no mapping: `.macro` the first, `.macros` all of them (in order), `.fields` where."""

    def __init__(self, macros: str | list[str], *, field: str | None = None, fields: list[str] | None = None,
                 source: Path | str | None = None) -> None:
        self.macros = [macros] if isinstance(macros, str) else list(dict.fromkeys(macros))
        self.macro = self.macros[0]
        self.fields = fields or ([field] if field else [])
        shown = ", ".join(f"{{{{{m[:60]}}}}}" for m in self.macros[:5])
        more = f" and {len(self.macros) - 5} more" if len(self.macros) > 5 else ""
        elsewhere = f" (also in {', '.join(f for f in self.fields if f != field)[:200]})" \
            if len(self.fields) > 1 else ""
        word = "macro" if len(self.macros) == 1 else "macros"
        super().__init__(
            f"unknown {word} {shown}{more}{elsewhere}: this bot has no equivalent. Import with "
            "--keep-unknown-macros to keep them as literal text (the model reads them as written), or edit "
            "the card first",
            field=field,
            source=source,
        )


class CardConflict(CardError):
    """The target persona or its assets exist already."""
