"""Character Card V2/V3 import and export (SillyTavern, RisuAI, CHub cards).

    result = import_card(Path("seraphina.png"), personas_dir)    # JSON, PNG or CHARX
    data, name = export_card(persona, personas_dir, v3=True, png=True)
    book = import_lorebook(Path("world.json"), personas_dir, name="world")

A card becomes an ordinary persona file (bot.cards.mapping has the field table) plus its assets
under `assets/<id>/`; everything a card contains is bounded (bot.cards.limits) and every failure is
a CardError naming the file and field, with nothing written (bot.cards.errors).
"""

from bot.cards.errors import CardConflict, CardError, CardFormatError, CardLimitError, CardMacroError
from bot.cards.service import ImportResult, export_card, import_card, import_lorebook

__all__ = [
    "CardConflict",
    "CardError",
    "CardFormatError",
    "CardLimitError",
    "CardMacroError",
    "ImportResult",
    "export_card",
    "import_card",
    "import_lorebook",
]
