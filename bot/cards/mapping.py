"""Card fields <-> persona fields. The README's mapping table documents every row.

    card (V1/V2/V3)                      persona
    name                                 name, identity.name (less what Discord refuses in webhook names)
    nickname (V3)                        nickname ({persona_name}, what {{char}} means)
    description, personality, scenario   character.description / .personality / .scenario
    first_mes                            greeting
    alternate_greetings                  alternate_greetings
    group_only_greetings (V3)            group_greetings
    mes_example                          examples (<START> blocks of {{user}}: / {{char}}: lines; a block the
                                         character opens gets the user turn SILENT_USER)
    system_prompt                        system_prompt (empty: DEFAULT_CARD_SYSTEM_PROMPT)
    post_history_instructions            post_history_instructions
    creator_notes                        description (shown to people, never in prompts; when longer than
                                         NOTES_LIMIT, shortened there and kept whole in card.creator_notes)
    character_version                    version
    character_book                       lorebook (bot.cards.lorebook_map); too large for a persona file:
                                         lorebooks/<id>.yaml, listed in `lorebooks` (bot.cards.service)
    tags, creator, source, creation_date, modification_date,
    creator_notes_multilingual           card.*
    assets (V3)                          card.assets (+ files under assets/<id>/), identity.avatar_path
    extensions                           card.extensions, verbatim, less what this bot reads:
      extensions.depth_prompt (SillyTavern's character note)   a constant lorebook entry "st-depth-prompt"
      extensions.persona_bot (this bot's own export)           generation, memory, speakers, greeting_pick,
                                                               greeting_in_prompt (nothing that chooses a
                                                               model, adapter or server: cards are untrusted)

Text over a persona limit (a name, a prompt, more than 100 examples or greetings) is cut with a
warning, never refused: a user expects a real card to import.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, TypeVar

from bot.cards.assets import MIME, AssetPlan
from bot.cards.errors import CardFormatError
from bot.cards.limits import MAX_TEXT_CHARS
from bot.cards.lorebook_map import OURS, ROLES, book_from_card, book_to_card
from bot.cards.macros import MacroMap, to_card_text
from bot.cards.schema import SPEC_V2, SPEC_V3, CardData
from bot.domain.character import DEFAULT_CARD_SYSTEM_PROMPT
from bot.domain.lorebook import Lorebook
from bot.domain.persona import ID_PATTERN, MAX_PROMPT_CHARS, Persona

T = TypeVar("T")
DEPTH_PROMPT_ID = "st-depth-prompt"
SAFE_EXTRAS = ("generation", "memory", "speakers", "greeting_pick", "greeting_in_prompt")
NAME_LIMIT = 80
VERSION_LIMIT = 32
NOTES_LIMIT = 2000  # Persona.description; longer creator notes are kept whole in card.creator_notes
MAX_EXAMPLES = 100
MAX_GREETINGS = 100
_START = re.compile(r"<start>", re.IGNORECASE)


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:64].strip("-")
    return slug if slug and re.fullmatch(ID_PATTERN, slug) else ""


def persona_id_for(name: str, nickname: str = "") -> str:
    """A persona id from a character's name: "Seraphina the Wise" -> "seraphina-the-wise", "Zoë" -> "zoe";
    a name with no Latin letters ("하나") -> its nickname's ("Hana" -> "hana"), else "character-" and a
    short hash of the name (distinct per name)."""
    slug = _slug(name) or _slug(nickname)
    if slug:
        return slug
    digest = hashlib.sha256(name.strip().encode("utf-8", "replace")).hexdigest()[:8]
    return f"character-{digest}" if name.strip() else "character"


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


#: The user turn of an example that the character opens (a voice sample: `{{char}}:` lines only).
SILENT_USER = "..."


def _speaker_pattern(labels: str) -> re.Pattern[str]:
    """`LABEL:` at the start of a line, also written **LABEL:** or *LABEL*: (markdown around the label
    is taken off only when it opens the line, so `{{char}}:*waves*` keeps its asterisk)."""
    return re.compile(rf"^\s*(\*\*|\*|__)?(?:{labels})(?(1)(?:\1)?)\s*:(?(1)(?:\1)?)\s?", re.IGNORECASE)


def parse_examples(text: str, macros: MacroMap, names: list[str], warnings: list[str]) -> list[dict[str, str]]:
    """mes_example -> few-shot pairs. A block starts at <START>; a line starting `{{user}}:` (<USER>:,
    User:, You:) is the user, `{{char}}:` (<BOT>:, the character's name or nickname:) the character;
    other lines continue the turn above. A block the character opens gets a silent user turn ("...");
    a user turn left without a reply is dropped (with a warning)."""
    char = names[0] if names else ""
    named = "".join("|" + re.escape(n) for n in names)
    bot = _speaker_pattern(rf"\{{\{{(?:char|bot)\}}\}}|<bot>|<char>{named}")
    words = [w for w in ("user", "you") if w not in {n.lower() for n in names}]  # not if the character is "You"
    user = _speaker_pattern("|".join([r"\{\{user\}\}", "<user>", *words]))
    pairs: list[dict[str, str]] = []
    dropped = 0
    for block in _START.split(text):
        turns: list[list[Any]] = []
        for line in block.split("\n"):
            role = "user" if (m := user.match(line)) else "assistant" if (m := bot.match(line)) else None
            if role is not None and m is not None:
                if turns and turns[-1][0] == role:
                    turns[-1][1].append(line[m.end() :])
                else:
                    turns.append([role, [line[m.end() :]]])
            elif turns:
                turns[-1][1].append(line)
            elif line.strip():
                dropped += 1
        if turns and turns[0][0] == "assistant":
            turns.insert(0, ["user", [SILENT_USER]])
        for i in range(0, len(turns), 2):
            u = "\n".join(turns[i][1]).strip()
            a = "\n".join(turns[i + 1][1]).strip() if i + 1 < len(turns) else ""
            if u and a:
                pairs.append({"user": macros.literal(u, "data.mes_example", char=char),
                              "assistant": macros.literal(a, "data.mes_example", char=char)})
            elif u or a:
                dropped += 1
    if dropped:
        warnings.append(f"mes_example: {dropped} line(s) or turn(s) without a user/character partner were left out")
    return pairs


def examples_text(persona: Persona) -> str:
    def block(user: str, assistant: str) -> str:
        opener = "" if user == SILENT_USER else f"{{{{user}}}}: {user}\n"
        return f"<START>\n{opener}{{{{char}}}}: {assistant}"

    return "\n".join(block(ex.user, ex.assistant) for ex in persona.examples)


def _creator_notes(persona: Persona) -> str:
    """The card's whole creator notes when the persona's description is still their shortened form."""
    whole = persona.card.creator_notes if persona.card else None
    if whole and whole.startswith(persona.description.removesuffix("…")):
        return whole
    return persona.description


def _depth_prompt_entry(ext: dict[str, Any], macros: MacroMap) -> dict[str, Any] | None:
    """SillyTavern's character note (extensions.depth_prompt) as a constant lorebook entry."""
    note = ext.get("depth_prompt")
    if not isinstance(note, dict) or not isinstance(note.get("prompt"), str) or not note["prompt"].strip():
        return None
    depth, role = note.get("depth", 4), note.get("role", "system")
    if isinstance(depth, str) and re.fullmatch(r"[0-9]{1,6}", depth.strip()):  # ST reads it with Number()
        depth = int(depth)
    if isinstance(role, int) and not isinstance(role, bool) and 0 <= role < len(ROLES):
        role = ROLES[role]
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= 1000 or role not in ROLES:
        return None
    del ext["depth_prompt"]
    return {"id": DEPTH_PROMPT_ID, "comment": "SillyTavern character note", "constant": True,
            "content": macros.template(_lines(note["prompt"]), "data.extensions.depth_prompt.prompt"),
            "position": "at_depth", "depth": depth, "role": role}


_NOT_IN_DISCORD_NAMES = re.compile(r"```|[@#:]|discord", re.IGNORECASE)


def discord_name(name: str, warnings: list[str]) -> str:
    """The name the persona posts under in Discord (`identity.name`): Discord refuses webhook names
    containing @, #, :, ``` or "discord" (HTTP 400), so those parts are left out there (the persona's
    `name`, which prompts use, keeps them)."""
    cleaned = re.sub(r"\s+", " ", _NOT_IN_DISCORD_NAMES.sub(lambda m: " -" if m.group() == ":" else " ", name))
    cleaned = re.sub(r"(^[\s-]+)|(\s+(?=\s|-\s*$))|([\s-]+$)", "", cleaned).strip() or "Character"
    if cleaned.lower() in ("everyone", "here"):
        cleaned += " (character)"
    if cleaned != name:
        warnings.append(f"Discord refuses @, #, :, ``` and 'discord' in the names webhooks post under: this persona "
                        f"posts as {cleaned!r} (identity.name)")
    return cleaned


def _fit(text: str, limit: int, what: str, warnings: list[str]) -> str:
    if len(text) <= limit:
        return text
    warnings.append(f"{what} cut to {limit} characters (it has {len(text)})")
    return text[:limit].rstrip()


def _first(items: list[T], limit: int, what: str, warnings: list[str]) -> list[T]:
    if len(items) > limit:
        warnings.append(f"{what}: {len(items)}, the first {limit} are kept")
    return items[:limit]


def persona_from_card(
    spec: str, data: CardData, persona_id: str, assets: AssetPlan, *, keep_unknown: bool, warnings: list[str]
) -> dict[str, Any]:
    """The persona file's fields for a card (validated by the caller, like any persona file)."""
    macros = MacroMap(keep_unknown, {k: _lines(getattr(data, k)) for k in ("description", "personality", "scenario")},
                      version=data.character_version)
    ext = dict(data.extensions)
    ours = ext.pop(OURS, None)
    ours = ours if isinstance(ours, dict) else {}
    ours_nickname = ours.get("nickname")
    nickname = data.nickname or (ours_nickname if isinstance(ours_nickname, str) else "")
    nickname = _fit(nickname.strip(), NAME_LIMIT, "nickname", warnings)
    names = [n for n in dict.fromkeys((nickname, data.name.strip())) if n]

    def template(field: str, text: str, original: str = "", limit: int = MAX_PROMPT_CHARS) -> str:
        return macros.template(_fit(_lines(text), limit, field, warnings), f"data.{field}", original=original)

    name = _fit(data.name.strip(), NAME_LIMIT, "name", warnings)
    version = _fit(data.character_version.strip(), VERSION_LIMIT, "character_version", warnings) or "1"
    group = data.group_only_greetings or [g for g in ours.get("group_only_greetings", []) if isinstance(g, str)]
    notes = _lines(data.creator_notes)
    persona: dict[str, Any] = {
        "id": persona_id,
        "name": name,
        "description": notes if len(notes) <= NOTES_LIMIT else notes[: NOTES_LIMIT - 1].rstrip() + "…",
        "version": version,
        "system_prompt": template("system_prompt", data.system_prompt, DEFAULT_CARD_SYSTEM_PROMPT).strip()
        or DEFAULT_CARD_SYSTEM_PROMPT,
        "nickname": nickname or None,
        "character": {k: template(k, getattr(data, k), limit=MAX_TEXT_CHARS)
                      for k in ("description", "personality", "scenario")},
        "greeting": template("first_mes", data.first_mes) or None,
        "alternate_greetings": [
            template(f"alternate_greetings.{i}", g)
            for i, g in enumerate(_first(data.alternate_greetings, MAX_GREETINGS, "alternate_greetings", warnings))
        ],
        "group_greetings": [template(f"group_only_greetings.{i}", g)
                            for i, g in enumerate(_first(group, MAX_GREETINGS, "group_only_greetings", warnings))],
        "examples": _first(parse_examples(_lines(data.mes_example), macros, names, warnings), MAX_EXAMPLES,
                           "mes_example: example exchanges", warnings),
        "post_history_instructions": template("post_history_instructions", data.post_history_instructions,
                                              limit=MAX_TEXT_CHARS).strip() or None,
        "greeting_in_prompt": True,  # SillyTavern: the greeting is the chat's first message
        "identity": {"name": discord_name(name, warnings), "avatar_path": assets.avatar_path,
                     "avatar_url": assets.avatar_url},
    }
    book = (book_from_card(data.character_book, macros, names[0], "data.character_book", warnings)
            if data.character_book else None)
    note = _depth_prompt_entry(ext, macros)
    if note is not None and not (book and any(e.get("id") == DEPTH_PROMPT_ID for e in book["entries"])):
        book = book or {"entries": []}
        book["entries"].append(note)
    persona["lorebook"] = book
    world = ext.get("world")
    if isinstance(world, str) and world.strip() and data.character_book is None:
        warnings.append(f"the card links SillyTavern's world info {world.strip()[:80]!r} without carrying it: import "
                        "that world-info file with `personas import-lorebook` and list it in the persona's "
                        "`lorebooks:`")
    persona.update({k: ours[k] for k in SAFE_EXTRAS if k in ours})
    persona["card"] = {
        "spec": spec, "creator": data.creator, "tags": data.tags, "source": data.source,
        "creation_date": data.creation_date, "modification_date": data.modification_date,
        "creator_notes": notes if len(notes) > NOTES_LIMIT else None,
        "creator_notes_multilingual": data.creator_notes_multilingual, "assets": assets.entries, "extensions": ext,
    }
    macros.check()
    warnings += macros.warnings()
    return persona


def _merged_book(persona: Persona) -> tuple[Lorebook | None, dict[str, Any] | None]:
    """All the persona's lorebooks as one card book (ids kept, renamed on clashes), and the
    SillyTavern character note taken out of it."""
    sources = persona.lore_sources
    if not sources:
        return None, None
    entries: list[Any] = []
    seen: set[str] = set()
    note: dict[str, Any] | None = None
    for source in sources:
        for entry in source.book.entries:
            if source.ref == "persona" and entry.id == DEPTH_PROMPT_ID and note is None:
                note = {"prompt": to_card_text(entry.content), "depth": entry.depth, "role": entry.role}
                continue
            if entry.id is not None and str(entry.id) in seen:
                entry = entry.model_copy(update={"id": f"{source.ref}-{entry.id}"})
            seen.add(str(entry.id))
            entries.append(entry)
    # The book settings (name, scan depth...) are those of the first book with entries of its own, not of
    # a book made only to hold the character note (a large card book lives in its own file then).
    first = next((s.book for s in sources if any(e.id != DEPTH_PROMPT_ID or s.ref != "persona"
                                                  for e in s.book.entries)), sources[0].book)
    merged = first.model_copy(update={"entries": tuple(entries)})
    # A book made only to hold the character note (nothing else in it) goes back to being just the note.
    holder = not entries and note is not None and merged == Lorebook()
    return (None if holder else merged), note


def _extras(persona: Persona) -> dict[str, Any]:
    extras: dict[str, Any] = {"greeting_in_prompt": persona.greeting_in_prompt}
    for name in ("generation", "memory", "speakers"):
        value = getattr(persona, name).model_dump(mode="json", exclude_defaults=True)
        if value:
            extras[name] = value
    if persona.greeting_pick != "first":
        extras["greeting_pick"] = persona.greeting_pick
    return extras


def card_from_persona(persona: Persona, *, v3: bool, assets: list[dict[str, Any]]) -> dict[str, Any]:
    """The card JSON for `persona`. `assets`: the V3 assets, their local files already turned into
    URIs a card can carry (data URLs, or ccdefault: for a PNG export's own icon)."""
    info = persona.card
    extras = _extras(persona)
    book, note = _merged_book(persona)
    extensions = dict(info.extensions) if info else {}
    if note is not None:
        extensions["depth_prompt"] = note
    if not v3:
        if persona.nickname:
            extras["nickname"] = persona.nickname
        if persona.group_greetings:
            extras["group_only_greetings"] = [to_card_text(g) for g in persona.group_greetings]
    extensions[OURS] = extras
    data: dict[str, Any] = {
        "name": persona.name,
        "description": to_card_text(persona.character.description),
        "personality": to_card_text(persona.character.personality),
        "scenario": to_card_text(persona.character.scenario),
        "first_mes": to_card_text(persona.greeting or ""),
        "mes_example": examples_text(persona),
        "creator_notes": _creator_notes(persona),
        "system_prompt": "" if persona.system_prompt == DEFAULT_CARD_SYSTEM_PROMPT
        else to_card_text(persona.system_prompt),
        "post_history_instructions": to_card_text(persona.post_history_instructions or ""),
        "alternate_greetings": [to_card_text(g) for g in persona.alternate_greetings],
        "tags": list(info.tags) if info else [],
        "creator": info.creator if info else "",
        "character_version": persona.version,
        "extensions": extensions,
    }
    if book is not None:
        data["character_book"] = book_to_card(book, v3=v3)
    if not v3:
        return {"spec": SPEC_V2, "spec_version": "2.0", "data": data}
    data["nickname"] = persona.nickname or ""
    data["group_only_greetings"] = [to_card_text(g) for g in persona.group_greetings]
    data["assets"] = assets
    if info:
        data["source"] = list(info.source)
        if info.creator_notes_multilingual:
            data["creator_notes_multilingual"] = dict(info.creator_notes_multilingual)
        for name in ("creation_date", "modification_date"):
            if getattr(info, name) is not None:
                data[name] = getattr(info, name)
    return {"spec": SPEC_V3, "spec_version": "3.0", "data": data}


def data_url(ext: str, blob: bytes) -> str:
    import base64

    return f"data:{MIME.get(ext.lower(), 'application/octet-stream')};base64,{base64.b64encode(blob).decode()}"


def check_spec_version(card: dict[str, Any], spec: str, warnings: list[str]) -> None:
    version = card.get("spec_version")
    try:
        number = float(version) if isinstance(version, str | int | float) else None
    except ValueError:
        number = None
    if spec == SPEC_V3 and number is not None and number >= 4.0:
        warnings.append(f"spec_version {version}: newer than this bot knows (3.0); new features may be ignored")
    if spec in (SPEC_V2, SPEC_V3) and version is not None and number is None:
        raise CardFormatError(f"spec_version {str(version)[:20]!r} is not a number", field="spec_version")
