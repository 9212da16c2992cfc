"""The Character Card V1/V2/V3 fields, as read from a card: lenient where real cards are sloppy
(null for absent, numbers for version labels), strict where it matters (types, sizes).

Built from the published specs: malfoyslastname/character-card-spec-v2 (spec_v1.md, spec_v2.md)
and kwaroran/character-card-spec-v3 (SPEC_V3.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from bot.cards.errors import CardFormatError
from bot.cards.limits import MAX_TEXT_CHARS
from bot.domain.lorebook import MAX_ENTRIES, MAX_KEY_LENGTH, MAX_KEYS

SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"
SPEC_V1 = "chara_card_v1"  # not a spec name: what this bot calls a card without `spec`
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _whole_number(value: Any) -> Any:
    """Insertion orders and priorities: numbers in the specs, integers here (1.5 rounds to 2)."""
    if isinstance(value, float) and value == value and abs(value) < 1e15:
        return round(value)
    return value


Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Label = Annotated[str, BeforeValidator(_number_as_text), Field(max_length=MAX_TEXT_CHARS)]
Whole = Annotated[int, BeforeValidator(_whole_number), Field(ge=-(10**9), le=10**9)]
Timestamp = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=2**53)]
Key = Annotated[str, BeforeValidator(_number_as_text), Field(max_length=MAX_KEY_LENGTH)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class CardBookEntry(_Lenient):
    keys: list[Key] = Field(default_factory=list, max_length=MAX_KEYS)
    content: Text = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    insertion_order: Whole = 100
    case_sensitive: bool | None = None
    use_regex: bool = False
    constant: bool = False
    name: Label = ""
    priority: Whole | None = None
    id: Whole | Annotated[str, Field(max_length=200)] | None = None
    comment: Text = ""
    selective: bool = False
    secondary_keys: list[Key] = Field(default_factory=list, max_length=MAX_KEYS)
    position: str | None = Field(default=None, max_length=50)


class CardBook(_Lenient):
    name: Label = ""
    description: Text = ""
    scan_depth: Whole | None = None
    token_budget: Whole | None = None
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = Field(default_factory=dict)
    entries: list[CardBookEntry] = Field(default_factory=list, max_length=MAX_ENTRIES)


class CardAssetIn(_Lenient):
    type: str = Field(max_length=100)
    uri: str = Field(max_length=MAX_TEXT_CHARS * 100)  # data: URIs hold whole images
    name: Label = ""
    ext: str = Field(default="", max_length=20)


class CardData(_Lenient):
    """The `data` object of a V2/V3 card (or a whole V1 card)."""

    name: Label = Field(min_length=1)
    description: Text = ""
    personality: Text = ""
    scenario: Text = ""
    first_mes: Text = ""
    mes_example: Text = ""
    creator_notes: Text = ""
    system_prompt: Text = ""
    post_history_instructions: Text = ""
    alternate_greetings: list[Text] = Field(default_factory=list, max_length=1000)
    character_book: CardBook | None = None
    tags: list[Label] = Field(default_factory=list, max_length=1000)
    creator: Label = ""
    character_version: Label = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    # V3
    assets: list[CardAssetIn] | None = Field(default=None, max_length=1000)
    nickname: Label = ""
    creator_notes_multilingual: dict[str, Text] = Field(default_factory=dict)
    source: list[Label] = Field(default_factory=list, max_length=1000)
    group_only_greetings: list[Text] = Field(default_factory=list, max_length=1000)
    creation_date: Timestamp | None = None
    modification_date: Timestamp | None = None


def card_data(card: dict[str, Any]) -> tuple[str, CardData]:
    """(spec, data) of a card's JSON object. Raises CardFormatError naming the field."""
    spec = card.get("spec")
    if spec in (SPEC_V2, SPEC_V3):
        raw = card.get("data")
        prefix = "data."
        if not isinstance(raw, dict):
            raise CardFormatError(f"a {spec} card needs a `data` object", field="data")
    elif spec is None:
        if not any(f in card for f in V1_FIELDS) or "data" in card:
            raise CardFormatError("not a character card: no `spec` and no V1 fields (name, description...)")
        spec, raw, prefix = SPEC_V1, card, ""
    else:
        hint = " (a lorebook: use `personas import-lorebook`)" if str(spec).startswith("lorebook") else ""
        raise CardFormatError(f"unsupported spec {str(spec)[:60]!r}{hint}; expected {SPEC_V2} or {SPEC_V3}",
                              field="spec")
    try:
        return spec, CardData.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = prefix + ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise CardFormatError(f"{first['msg']}{more}", field=where.rstrip(".") or None) from None
