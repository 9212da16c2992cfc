"""The Character Card V1/V2/V3 fields, as read from a card: lenient where real cards are sloppy
(null for absent, numbers for version labels), strict where it matters (types, sizes).

Built from the published specs: malfoyslastname/character-card-spec-v2 (spec_v1.md, spec_v2.md)
and kwaroran/character-card-spec-v3 (SPEC_V3.md).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from bot.cards.errors import CardFormatError
from bot.cards.limits import MAX_TEXT_CHARS
from bot.domain.lorebook import MAX_ENTRIES

SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"
SPEC_V1 = "chara_card_v1"  # not a spec name: what this bot calls a card without `spec`
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
#: Keys an entry may list in a card; beyond bot.domain.lorebook.MAX_KEYS the import keeps the first ones.
MAX_CARD_KEYS = 10_000


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _whole_number(value: Any) -> Any:
    """Insertion orders and priorities: numbers in the specs, integers here (1.5 rounds to 2)."""
    if isinstance(value, float) and value == value and abs(value) < 1e15:
        return round(value)
    return value


def _one_or_many(value: Any) -> Any:
    """A list field written as one text (SillyTavern reads `"alternate_greetings": "Hi"` as ["Hi"]);
    null items are left out."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [v for v in value if v is not None] if isinstance(value, list) else value


def _comma_list(value: Any) -> Any:
    """Tags and lorebook keys written as one comma-separated text (SillyTavern, RisuAI): split.
    A `/regex/flags` key stays whole (its commas belong to the pattern)."""
    if isinstance(value, str):
        if re.fullmatch(r"/.+/[a-z]*", value.strip(), re.DOTALL):
            return [value.strip()]
        return [part.strip() for part in value.split(",") if part.strip()]
    return _one_or_many(value)


def _empty_object(value: Any) -> Any:
    """`extensions: []` (an empty JS/PHP array where an object was meant) or "" is an empty object."""
    return {} if value == [] or value == "" else value


#: Version labels that are a JavaScript slip, not a version (RisuAI writes `${undefined}`).
_NO_VERSION = frozenset({"undefined", "null", "none", "nan"})


def _version(value: Any) -> Any:
    value = _number_as_text(value)
    return "" if isinstance(value, str) and value.strip().lower() in _NO_VERSION else value


Text = Annotated[str, BeforeValidator(_number_as_text), Field(max_length=MAX_TEXT_CHARS)]
Label = Text
Whole = Annotated[int, BeforeValidator(_whole_number), Field(ge=-(10**9), le=10**9)]
Timestamp = Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=2**53)]
Key = Annotated[str, BeforeValidator(_number_as_text), Field(max_length=MAX_TEXT_CHARS)]
Keys = Annotated[list[Key], BeforeValidator(_comma_list), Field(max_length=MAX_CARD_KEYS)]
Texts = Annotated[list[Text], BeforeValidator(_one_or_many), Field(max_length=1000)]
Labels = Annotated[list[Label], BeforeValidator(_comma_list), Field(max_length=1000)]
Extensions = Annotated[dict[str, Any], BeforeValidator(_empty_object)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


#: SillyTavern world-info entry fields (its own names) -> card entry fields, or keys of `extensions`.
_WI_RENAMES = {"key": "keys", "keysecondary": "secondary_keys", "order": "insertion_order", "uid": "id"}
_WI_TO_EXTENSIONS = {"scanDepth": "scan_depth", "caseSensitive": "case_sensitive",
                     "matchWholeWords": "match_whole_words", "excludeRecursion": "exclude_recursion",
                     "preventRecursion": "prevent_recursion", "displayIndex": "display_index",
                     "groupOverride": "group_override", "groupWeight": "group_weight",
                     "useGroupScoring": "use_group_scoring", "automationId": "automation_id",
                     "delayUntilRecursion": "delay_until_recursion"}
_ENTRY_FIELDS = frozenset({"keys", "content", "extensions", "enabled", "insertion_order", "case_sensitive",
                           "use_regex", "constant", "name", "priority", "id", "comment", "selective",
                           "secondary_keys", "position"})


def world_info_entry(raw: dict[str, Any]) -> dict[str, Any]:
    """A lorebook entry in SillyTavern's world-info shape (`key`, `keysecondary`, `uid`, `disable`,
    `order`, numeric `position`...) as a card entry; other fields go to `extensions` (as SillyTavern
    writes them when it exports a card). A card entry passes through with only a numeric `position`
    moved to `extensions.position`."""
    ext = raw.get("extensions")
    entry: dict[str, Any] = {"extensions": dict(ext) if isinstance(ext, dict) else {}}
    for key, value in raw.items():
        if key == "extensions" or value is None:
            continue
        name = _WI_RENAMES.get(key, key)
        if name == "disable":
            entry.setdefault("enabled", not value)
        elif name == "position" and isinstance(value, int | float) and not isinstance(value, bool):
            entry["extensions"].setdefault("position", value)  # SillyTavern's numbering (bot.cards.lorebook_map)
            entry["position"] = "before_char" if value == 0 else "after_char"
        elif name in _ENTRY_FIELDS:
            entry.setdefault(name, value)
        else:
            entry["extensions"].setdefault(_WI_TO_EXTENSIONS.get(name, name), value)
    return entry


def _entries(value: Any) -> Any:
    """Entries as a list: SillyTavern keeps them in an object by uid (ordered by displayIndex)."""
    if isinstance(value, dict):
        def order(item: tuple[str, Any]) -> tuple[float, int, str]:
            key, entry = item
            shown = entry.get("displayIndex", entry.get("display_index")) if isinstance(entry, dict) else None
            shown = shown if isinstance(shown, int | float) and not isinstance(shown, bool) else float("inf")
            return (shown, int(key) if key.isascii() and key.isdigit() and len(key) < 12 else 10**12, key)

        value = [entry for _, entry in sorted(value.items(), key=order)]
    if isinstance(value, list):
        return [world_info_entry(e) if isinstance(e, dict) else e for e in value if e is not None]
    return value


class CardBookEntry(_Lenient):
    keys: Keys = Field(default_factory=list)
    content: Text = ""
    extensions: Extensions = Field(default_factory=dict)
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
    secondary_keys: Keys = Field(default_factory=list)
    position: str | None = Field(default=None, max_length=50)


class CardBook(_Lenient):
    name: Label = ""
    description: Text = ""
    scan_depth: Whole | None = None
    token_budget: Whole | None = None
    recursive_scanning: bool | None = None
    extensions: Extensions = Field(default_factory=dict)
    entries: Annotated[list[CardBookEntry], BeforeValidator(_entries)] = Field(
        default_factory=list, max_length=MAX_ENTRIES)


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
    alternate_greetings: Texts = Field(default_factory=list)
    character_book: CardBook | None = None
    tags: Labels = Field(default_factory=list)
    creator: Label = ""
    character_version: Annotated[str, BeforeValidator(_version), Field(max_length=MAX_TEXT_CHARS)] = ""
    extensions: Extensions = Field(default_factory=dict)
    # V3
    assets: list[CardAssetIn] | None = Field(default=None, max_length=1000)
    nickname: Label = ""
    creator_notes_multilingual: dict[str, Text] = Field(default_factory=dict)
    source: Texts = Field(default_factory=list)
    group_only_greetings: Texts = Field(default_factory=list)
    creation_date: Timestamp | None = None
    modification_date: Timestamp | None = None


#: The Pygmalion/TavernAI ("Gradio") card fields, before V1 settled on its names.
_GRADIO_FIELDS = {"char_name": "name", "char_persona": "description", "char_greeting": "first_mes",
                  "world_scenario": "scenario", "example_dialogue": "mes_example"}


def _v1_fields(card: dict[str, Any]) -> dict[str, Any]:
    """A card without `spec`: V1 fields, the older Gradio names, SillyTavern's `creatorcomment`."""
    raw = dict(card)
    for old, new in _GRADIO_FIELDS.items():
        if old in raw:
            raw.setdefault(new, raw.pop(old))
    if "creatorcomment" in raw:
        raw.setdefault("creator_notes", raw.pop("creatorcomment"))
    return raw


def card_data(card: dict[str, Any], warnings: list[str] | None = None) -> tuple[str, CardData]:
    """(spec, data) of a card's JSON object. Raises CardFormatError naming the field.

    Lenient where real cards are: a V2/V3 card's `data` fields fall back to the V1 fields at the top
    (SillyTavern writes both, and reads the top ones when `data` lacks them); a card without `spec` is
    V1 (or the older Gradio format: char_name, char_persona, char_greeting...)."""
    spec = card.get("spec")
    if spec in (SPEC_V2, SPEC_V3):
        raw = card.get("data")
        prefix = "data."
        if raw is None and any(f in card for f in V1_FIELDS):
            if warnings is not None:
                warnings.append(f"a {spec} card without its `data` object: read from its top-level (V1) fields")
            raw = {}
        if not isinstance(raw, dict):
            raise CardFormatError(f"a {spec} card needs a `data` object", field="data")
        top = _v1_fields(card)
        data_name = raw.get("name")
        raw = {**{f: top[f] for f in (*V1_FIELDS, "tags", "creator_notes") if top.get(f) is not None},
               **{k: v for k, v in raw.items() if v is not None}}
        if isinstance(data_name, str) and not data_name.strip() and top.get("name") is not None:
            raw["name"] = top["name"]  # SillyTavern: `data.name || name`
    elif spec is None or spec == SPEC_V1:
        raw = _v1_fields(card)
        if not any(f in raw for f in V1_FIELDS) or "data" in card:
            raise CardFormatError("not a character card: no `spec` and no V1 fields (name, description...)")
        spec, prefix = SPEC_V1, ""
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
