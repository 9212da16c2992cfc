"""Card lorebooks (`character_book`, `lorebook_v3` files, SillyTavern world info) <-> this bot's Lorebook.

The card fields map one to one (keys, secondary_keys, selective, content, enabled, constant, use_regex,
case_sensitive, insertion_order, priority, id, name, comment, position). What the card specs leave
to applications is read from where SillyTavern keeps it in an entry's `extensions` (position 0-6,
depth, role, selectiveLogic, scan_depth, match_whole_words, exclude/prevent_recursion) and from
Character Card V3 decorators at the top of the content (`@@depth 4`, `@@role user`,
`@@activate_only_after 3`...). Those keys are taken out of `extensions` (the entry's own fields say
it) and written back on export, so import -> export -> import is stable; other keys stay verbatim.
Decorators this bot does not support are kept in `decorators` and written back in V3 exports.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from bot.cards.errors import CardFormatError
from bot.cards.macros import MacroMap, to_card_text
from bot.cards.schema import CardBook, CardBookEntry
from bot.domain.lorebook import (
    DEFAULT_DEPTH,
    DEFAULT_SCAN_DEPTH,
    MAX_CONTENT_LENGTH,
    MAX_KEY_LENGTH,
    MAX_KEYS,
    MAX_SCAN_DEPTH,
    Lorebook,
    LoreEntry,
    compile_key_regex,
    slashed_regex,
)

OURS = "persona_bot"
ST_POSITION_IN = {0: "before_character", 1: "after_character", 2: "at_depth", 3: "at_depth", 4: "at_depth",
                  5: "before_history", 6: "before_history"}
ST_POSITION_OUT = {"before_system": 0, "before_character": 0, "after_character": 1, "before_history": 6,
                   "at_depth": 4}
ROLES = ("system", "user", "assistant")  # SillyTavern's role numbers are the indexes
LOGICS = ("and_any", "not_all", "not_any", "and_all")  # SillyTavern's selectiveLogic numbers
_DECORATOR_POSITIONS = {"before_desc": "before_character", "after_desc": "after_character",
                        "personality": "after_character", "scenario": "after_character"}


def _int(value: Any, low: int = 0, high: int = MAX_SCAN_DEPTH) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    return int(value) if low <= value <= high else None


def _take(ext: dict[str, Any], key: str, check: Any) -> Any:
    """Pop `key` from `ext`: `check(value)`, None when invalid. These keys are the entry's own fields
    now (an export writes them back from those), so an invalid value is dropped, not kept."""
    return check(ext.pop(key)) if key in ext else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _apply_decorator(name: str, value: str, fields: dict[str, Any]) -> bool:
    """Apply one V3 decorator to the entry's fields; False if this bot does not support it (as written)."""
    # ASCII digits only: str.isdigit() also says yes to "²", which int() refuses.
    number = int(value) if re.fullmatch(r"-?[0-9]{1,12}", value.strip()) else None
    match name:
        case "activate":
            fields["constant"] = True
        case "dont_activate":
            fields["enabled"] = False
        case "depth" if number is not None and 0 <= number <= MAX_SCAN_DEPTH:
            fields["position"], fields["depth"] = "at_depth", number
        case "role" if value.strip() in ROLES:
            fields["role"] = value.strip()
        case "scan_depth" if number is not None and 0 <= number <= MAX_SCAN_DEPTH:
            fields["scan_depth"] = number
        case "position" if value.strip() in _DECORATOR_POSITIONS:
            fields["position"] = _DECORATOR_POSITIONS[value.strip()]
        case "activate_only_after" if number is not None and number >= 0:
            fields["only_after"] = number
        case "activate_only_every" if number is not None and number >= 1:
            fields["only_every"] = number
        case "is_greeting" if number is not None and number >= 0:
            fields["greeting"] = number
        case "match_full_word" | "match_partial_word":  # RisuAI
            fields["match_whole_words"] = name == "match_full_word"
        case "exclude_keys_all" if not fields.get("secondary_keys") and value.strip():  # RisuAI
            fields["secondary_keys"] = [k.strip() for k in value.split(",") if k.strip()]
            fields["selective"], fields["logic"] = True, "not_all"
        case "additional_keys" | "exclude_keys" if not fields.get("secondary_keys") and value.strip():
            fields["secondary_keys"] = [k.strip() for k in value.split(",") if k.strip()]
            fields["selective"] = True
            fields["logic"] = "and_any" if name == "additional_keys" else "not_any"
        case _:
            return False
    return True


def take_decorators(content: str, fields: dict[str, Any]) -> tuple[str, list[str]]:
    """Apply the decorators at the top of `content`: (content without them, unsupported decorator lines).

    A `@@@name` line is a fallback of the decorator above it, tried when that one is not supported."""
    lines = content.split("\n")
    top = 0
    while top < len(lines) and lines[top].startswith("@@"):
        top += 1
    chains: list[list[str]] = []
    for line in lines[:top]:
        if line.startswith("@@@") and chains:
            chains[-1].append(line)
        else:
            chains.append([line])
    kept: list[str] = []
    for chain in chains:
        for line in chain:
            name, _, value = line.lstrip("@").partition(" ")
            if _apply_decorator(name.strip(), value, fields):
                break
        else:
            kept += chain
    return "\n".join(lines[top:]).strip("\n"), kept


def _cut(text: str, limit: int, where: str, warnings: list[str]) -> str:
    if len(text) <= limit:
        return text
    warnings.append(f"{where} cut to {limit} characters (it has {len(text)})")
    return text[:limit]


def _sillytavern_entry(ext: dict[str, Any]) -> bool:
    """Whether an entry was written by SillyTavern (its card export adds `display_index`)."""
    return "display_index" in ext


def entry_from_card(
    entry: CardBookEntry, macros: MacroMap, char: str, where: str, warnings: list[str] | None = None
) -> dict[str, Any]:
    ext = dict(entry.extensions)
    ours = ext.pop(OURS, None)
    ours = ours if isinstance(ours, dict) else {}
    # SillyTavern exports every entry with `use_regex: true` ("ST keys are always regex") but reads its
    # keys as plain text unless written /pattern/flags, and so does RisuAI: read them as they were meant.
    use_regex = (entry.use_regex and not _sillytavern_entry(ext)) or ours.get("use_regex") is True
    case_sensitive = bool(entry.case_sensitive)
    notes = warnings if warnings is not None else []

    def key(value: str, field: str) -> str | None:
        if len(value) > MAX_KEY_LENGTH:
            notes.append(f"{field}: a key of {len(value)} characters (limit {MAX_KEY_LENGTH}) is left out")
            return None
        if not (use_regex or slashed_regex(value)):
            return macros.literal(value, field, char=char)
        try:
            compile_key_regex(value, case_sensitive)
        except ValueError as exc:  # the V3 spec: an invalid pattern is no match
            notes.append(f"{field}: {exc}; the key is left out")
            return None
        return value

    def keys(values: list[str], field: str) -> list[str]:
        kept = [k for j, v in enumerate(values) if (k := key(v, f"{where}.{field}.{j}")) is not None]
        if len(kept) > MAX_KEYS:
            notes.append(f"{where}.{field}: {len(kept)} keys, the first {MAX_KEYS} are kept")
        return kept[:MAX_KEYS]

    fields: dict[str, Any] = {
        "keys": keys(entry.keys, "keys"),
        "secondary_keys": keys(entry.secondary_keys, "secondary_keys"),
        "selective": entry.selective,
        "enabled": entry.enabled and ext.get("mode") != "folder",  # RisuAI's folders only group entries
        "constant": entry.constant,
        "use_regex": use_regex,
        "insertion_order": entry.insertion_order,
        "priority": entry.priority,
        "name": _cut(entry.name, 500, f"{where}.name", notes),
        "comment": _cut(entry.comment, 10_000, f"{where}.comment", notes),
    }
    if entry.id is not None:
        fields["id"] = entry.id
    st_position = _take(ext, "position", lambda v: _int(v, 0, 6))
    position = ours.get("position") or (ST_POSITION_IN[st_position] if st_position is not None else None)
    fields["position"] = position or ("before_character" if entry.position == "before_char" else "after_character")
    depth = _take(ext, "depth", _int)
    fields["depth"] = DEFAULT_DEPTH if depth is None else depth
    role = _take(ext, "role", lambda v: _int(v, 0, 2))
    fields["role"] = ROLES[role] if role is not None else "system"
    logic = _take(ext, "selectiveLogic", lambda v: _int(v, 0, 3))
    fields["logic"] = LOGICS[logic] if logic is not None else "and_any"
    fields["scan_depth"] = _take(ext, "scan_depth", _int)
    case_sensitive = _take(ext, "case_sensitive", _bool)
    fields["case_sensitive"] = entry.case_sensitive if entry.case_sensitive is not None else case_sensitive
    fields["match_whole_words"] = _take(ext, "match_whole_words", _bool)
    fields["exclude_recursion"] = bool(_take(ext, "exclude_recursion", _bool))
    fields["prevent_recursion"] = bool(_take(ext, "prevent_recursion", _bool))
    for name in ("only_after", "only_every", "greeting"):
        fields[name] = _int(ours.get(name), 0, 10**9)
    content, kept = take_decorators(entry.content, fields)
    room = MAX_CONTENT_LENGTH - content.count("{") - content.count("}")  # escaping doubles braces
    fields["content"] = macros.template(_cut(content, room, f"{where}.content", notes), f"{where}.content")
    saved = ours.get("decorators")  # a V2 export keeps them here (V2 readers would show them to the model)
    fields["decorators"] = kept or ([d for d in saved if isinstance(d, str) and d.startswith("@@")][:64]
                                    if isinstance(saved, list) else [])
    fields["extensions"] = ext
    return fields


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


#: SillyTavern world-info features this bot does not have: (test on an entry's extensions, what happens here).
_UNSUPPORTED: tuple[tuple[Any, str], ...] = (
    (lambda x: x.get("useProbability") is not False and _positive(100 - x.get("probability", 100)),
     "a probability below 100%; here they always fire"),
    (lambda x: isinstance(x.get("group"), str) and x["group"].strip(),
     "an inclusion group; here every entry of a group may fire"),
    (lambda x: any(_positive(x.get(k)) for k in ("sticky", "cooldown", "delay")),
     "timed effects (sticky, cooldown, delay); here they fire whenever their keys match"),
    (lambda x: x.get("vectorized") is True, "vector matching; here only their keys fire them"),
    (lambda x: x.get("delay_until_recursion") not in (None, False, 0),
     "a delay until recursion; here they do not wait"),
)


def _unsupported_notes(book: CardBook, where: str) -> list[str]:
    """One note per SillyTavern world-info feature this bot does not have, with how many entries use it."""
    notes = []
    for test, what in _UNSUPPORTED:
        count = sum(1 for e in book.entries if e.enabled and test(e.extensions))
        if count:
            notes.append(f"{where}: {count} {'entry' if count == 1 else 'entries'} with {what}")
    return notes


def book_from_card(
    book: CardBook, macros: MacroMap, char: str, where: str, warnings: list[str] | None = None
) -> dict[str, Any]:
    ext = dict(book.extensions)
    ours = ext.pop(OURS, None)
    ours = ours if isinstance(ours, dict) else {}
    out: dict[str, Any] = {
        "name": book.name,
        "description": book.description,
        "scan_depth": DEFAULT_SCAN_DEPTH if book.scan_depth is None else max(0, min(book.scan_depth, MAX_SCAN_DEPTH)),
        "token_budget": book.token_budget if book.token_budget and book.token_budget > 0 else None,
        "recursive_scanning": bool(book.recursive_scanning),
        "extensions": ext,
        "entries": _unique_ids([entry_from_card(e, macros, char, f"{where}.entries.{i}", warnings)
                                for i, e in enumerate(book.entries)], where, warnings),
    }
    if warnings is not None:
        warnings += _unsupported_notes(book, where)
    if isinstance(ext.get("risu_fullWordMatching"), bool):  # RisuAI's book setting (kept for RisuAI too)
        out["match_whole_words"] = ext["risu_fullWordMatching"]
    for name in ("max_recursion", "case_sensitive", "match_whole_words"):
        if name in ours:
            out[name] = ours[name]
    return out


def _unique_ids(entries: list[dict[str, Any]], where: str, warnings: list[str] | None) -> list[dict[str, Any]]:
    """Entries whose ids repeat (merged or hand-edited books) get the next free `ID-2`, `ID-3`..."""
    seen = {str(e["id"]) for e in entries if "id" in e}
    if len(seen) == sum("id" in e for e in entries):
        return entries
    taken: set[str] = set()
    next_n: dict[str, int] = {}  # per id, where to look for a free suffix (linear, also for 20,000 repeats)
    renamed: list[str] = []
    for i, entry in enumerate(entries):
        if "id" not in entry:
            continue
        old = str(entry["id"])
        if old in taken:
            n = next_n.get(old, 2)
            while f"{old}-{n}" in seen:
                n += 1
            next_n[old] = n + 1
            entry["id"] = f"{old}-{n}"
            seen.add(entry["id"])
            renamed.append(f"entries.{i}: {old} -> {entry['id']}")
        taken.add(str(entry["id"]))
    if warnings is not None:
        more = f" and {len(renamed) - 3} more" if len(renamed) > 3 else ""
        warnings.append(f"{where}: {len(renamed)} entry id(s) used twice, renamed ({'; '.join(renamed[:3])}{more})")
    return entries


def _entry_decorators(entry: LoreEntry) -> list[str]:
    lines = list(entry.decorators)
    if entry.position == "at_depth":
        lines.append(f"@@depth {entry.depth}")
        if entry.role != "system":
            lines.append(f"@@role {entry.role}")
    for name, value in (("scan_depth", entry.scan_depth), ("activate_only_after", entry.only_after),
                        ("activate_only_every", entry.only_every), ("is_greeting", entry.greeting)):
        if value is not None:
            lines.append(f"@@{name} {value}")
    return lines


def entry_to_card(entry: LoreEntry, *, v3: bool) -> dict[str, Any]:
    ours: dict[str, Any] = {k: v for k, v in (("only_after", entry.only_after), ("only_every", entry.only_every),
                                              ("greeting", entry.greeting)) if v is not None}
    if entry.position == "before_system":
        ours["position"] = "before_system"
    if entry.decorators and not v3:
        ours["decorators"] = list(entry.decorators)
    if entry.use_regex and not v3:
        ours["use_regex"] = True
    ext: dict[str, Any] = {
        **entry.extensions,
        "position": ST_POSITION_OUT[entry.position],
        "depth": entry.depth,
        "role": ROLES.index(entry.role),
        "selectiveLogic": LOGICS.index(entry.logic),
        "exclude_recursion": entry.exclude_recursion,
        "prevent_recursion": entry.prevent_recursion,
    }
    for name in ("scan_depth", "case_sensitive", "match_whole_words"):
        if getattr(entry, name) is not None:
            ext[name] = getattr(entry, name)
    if ours:
        ext[OURS] = ours
    content = to_card_text(entry.content)
    if v3 and (decorators := _entry_decorators(entry)):
        content = "\n".join(decorators) + "\n" + content
    card: dict[str, Any] = {
        "keys": list(entry.keys),
        "content": content,
        "extensions": ext,
        "enabled": entry.enabled,
        "insertion_order": entry.insertion_order,
        "case_sensitive": entry.case_sensitive,
        "constant": entry.constant,
        "name": entry.name,
        "priority": entry.priority,
        "comment": entry.comment,
        "selective": entry.selective,
        "secondary_keys": list(entry.secondary_keys),
        "position": "before_char" if entry.position in ("before_system", "before_character") else "after_char",
    }
    if v3:
        card["use_regex"] = entry.use_regex
    if entry.id is not None:
        card["id"] = entry.id
    return {k: v for k, v in card.items() if v is not None}


def book_to_card(book: Lorebook, *, v3: bool) -> dict[str, Any]:
    ours = {name: getattr(book, name) for name in ("max_recursion", "case_sensitive", "match_whole_words")
            if getattr(book, name) != Lorebook.model_fields[name].default}
    card: dict[str, Any] = {
        "name": book.name,
        "description": book.description,
        "scan_depth": book.scan_depth,
        "recursive_scanning": book.recursive_scanning,
        "extensions": {**book.extensions, **({OURS: ours} if ours else {})},
        "entries": [entry_to_card(e, v3=v3) for e in book.entries],
    }
    if book.token_budget is not None:
        card["token_budget"] = book.token_budget
    return card


def lorebook_from_file(
    data: dict[str, Any], macros: MacroMap, char: str = "", warnings: list[str] | None = None
) -> dict[str, Any]:
    """A standalone lorebook file: `{"spec": "lorebook_v3", "data": {...}}`, a card book object, a
    SillyTavern world-info export (`{"entries": {"0": {"key": [...], ...}}}`), or a character card
    JSON (its `character_book`, to share it between personas)."""
    if data.get("spec") == "lorebook_v3":
        inner = data.get("data")
        data = inner if isinstance(inner, dict) else {}
    elif data.get("spec") in ("chara_card_v2", "chara_card_v3"):
        inner = data.get("data")
        book = inner.get("character_book") if isinstance(inner, dict) else None
        if not isinstance(book, dict):
            raise CardFormatError("this character card has no lorebook (no `data.character_book`)",
                                  field="data.character_book")
        data = book
    if not isinstance(data.get("entries"), list | dict):
        raise CardFormatError("not a lorebook: no `entries` list (or SillyTavern `entries` object)", field="entries")
    try:
        book = CardBook.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CardFormatError(first["msg"], field=".".join(str(p) for p in first["loc"])) from None
    return book_from_card(book, macros, char, "entries", warnings)
