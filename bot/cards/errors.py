"""Errors of card import and export. Each names the file and, where it can, the card field.

    CardError (BotError)          .source (the file), .field (e.g. "data.character_book.entries.3.keys")
    ├── CardFormatError           not a readable card: bad JSON, PNG, zip or base64, wrong spec, wrong types
    ├── CardLimitError            over a documented limit: size, nesting, counts, a zip bomb
    ├── CardMacroError            a macro this bot cannot map ({{random:...}}...): .macro
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
    def __init__(self, macro: str, *, field: str | None = None, source: Path | str | None = None) -> None:
        self.macro = macro
        super().__init__(
            f"unknown macro {{{{{macro[:60]}}}}}: this bot has no equivalent (import with --keep-unknown-macros "
            "to keep it as literal text)",
            field=field,
            source=source,
        )


class CardConflict(CardError):
    """The target persona or its assets exist already."""
