"""The card operations behind `python -m bot personas import|export|import-lorebook`."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bot.cards import png
from bot.cards.assets import plan_assets
from bot.cards.errors import CardConflict, CardError, CardFormatError, CardLimitError
from bot.cards.limits import MAX_ASSET_BYTES, MAX_FILE_BYTES
from bot.cards.lorebook_map import lorebook_from_file
from bot.cards.macros import MacroMap
from bot.cards.mapping import (
    DEPTH_PROMPT_ID,
    card_from_persona,
    check_spec_version,
    data_url,
    persona_from_card,
    persona_id_for,
)
from bot.cards.reader import clean_strings, decode_json, read_card_file
from bot.cards.schema import SPEC_V3, card_data
from bot.cards.store import (
    atomic_write,
    book_header,
    fits_persona_file,
    lorebook_yaml,
    persona_yaml,
    write_persona,
)
from bot.domain.lorebook import Lorebook
from bot.domain.persona import ID_PATTERN, Persona
from bot.errors import PersonaFileError

V3_BACKFILL_NOTE = (
    "This character card is Character Card V3, but it is loaded as a Character Card V2. Please use a "
    "Character Card V3 compatible application to use this character card properly.\n\n"
)


@dataclass
class ImportResult:
    persona: Persona
    path: Path
    assets: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: The persona's own lorebook file, when its card's book was too large for the persona file.
    lorebook: Path | None = None


def _validated(fields: dict[str, Any]) -> Persona:
    try:
        return Persona.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CardFormatError(f"the card does not make a valid persona: {where}: {first['msg']}") from None


def import_card(
    file: Path, personas_dir: Path, *, persona_id: str | None = None, force: bool = False,
    keep_unknown_macros: bool = False,
) -> ImportResult:
    """Import a card file as `personas_dir/<id>.yaml` (+ assets). Raises CardError; writes nothing then."""
    if persona_id is not None and not re.fullmatch(ID_PATTERN, persona_id):
        raise CardFormatError(f"--id {persona_id!r}: lowercase letters, digits, - and _ (at most 64)")
    card = read_card_file(file)
    warnings: list[str] = []
    if card.cleaned:
        warnings.append(f"control characters or broken characters were taken out of {card.cleaned} text(s)")
    try:
        spec, data = card_data(card.card, warnings)
        check_spec_version(card.card, spec, warnings)
        pid = persona_id or persona_id_for(data.name, data.nickname)
        assets = plan_assets(card, data.assets if spec == SPEC_V3 else None, pid)
        warnings += assets.warnings
        fields = persona_from_card(spec, data, pid, assets, keep_unknown=keep_unknown_macros, warnings=warnings)
        persona = _validated(fields)
        header = f"Imported from {file.name} ({spec}) by `python -m bot personas import`."
        book_text = None
        text = persona_yaml(persona, header) if fits_persona_file(persona) else ""
        if not text or not fits_persona_file(persona, text):
            persona, book = _own_lorebook(persona)
            text = persona_yaml(persona, header)
            book_text = lorebook_yaml(book, book_header(pid, file.name))
    except CardError as exc:
        raise exc.at(file) from exc.__cause__
    path = write_persona(personas_dir, pid, text, assets.files, force=force, book=book_text)
    from bot.personas.loader import load_persona_file
    from bot.personas.lorebooks import lorebook_path

    return ImportResult(load_persona_file(path), path, [personas_dir / f.path for f in assets.files], warnings,
                        lorebook_path(personas_dir, pid) if book_text is not None else None)


def _own_lorebook(persona: Persona) -> tuple[Persona, Lorebook]:
    """A card book too large for the persona file moves to its own lorebook file, named like the
    persona; SillyTavern's character note stays inline (the export tells it apart there)."""
    assert persona.lorebook is not None
    entries = persona.lorebook.entries
    notes = tuple(e for e in entries if e.id == DEPTH_PROMPT_ID)
    book = persona.lorebook.model_copy(update={"entries": tuple(e for e in entries if e.id != DEPTH_PROMPT_ID)})
    inline = Lorebook(entries=notes) if notes else None
    return persona.model_copy(update={"lorebook": inline, "lorebooks": (persona.id, *persona.lorebooks)}), book


def _asset_uris(
    persona: Persona, personas_dir: Path, *, png_icon: str | None, warnings: list[str]
) -> list[dict[str, Any]]:
    """The persona's V3 assets with local files as data URLs (the PNG's own icon as ccdefault:)."""
    listed = [a.model_dump() for a in persona.card.assets] if persona.card else []
    avatar = persona.identity.avatar_path if persona.identity else None
    if avatar and not any(a["uri"] == avatar for a in listed):
        listed.insert(0, {"type": "icon", "uri": avatar, "name": "main", "ext": Path(avatar).suffix.lstrip(".")})
    out = []
    for asset in listed:
        uri = asset["uri"]
        if uri.startswith("assets/") or uri == avatar:
            if uri == png_icon:
                asset = {**asset, "uri": "ccdefault:"}
            else:
                path = personas_dir / uri
                try:
                    if path.stat().st_size > MAX_ASSET_BYTES:
                        raise CardLimitError(f"asset {uri} is over {MAX_ASSET_BYTES} bytes")
                    asset = {**asset, "uri": data_url(asset["ext"], path.read_bytes())}
                except (OSError, CardLimitError) as exc:
                    warnings.append(f"asset {uri} left out: {exc}")
                    continue
        out.append(asset)
    return out


def export_card(
    persona: Persona, personas_dir: Path, *, v3: bool, png_file: bool = False
) -> tuple[bytes, str, list[str]]:
    """(file bytes, suggested file name, warnings) of `persona` as a V2 or V3 card, JSON or PNG."""
    warnings: list[str] = []
    avatar = persona.identity.avatar_path if persona.identity else None
    image: bytes | None = None
    if png_file and avatar:
        try:
            candidate = (personas_dir / avatar).read_bytes()[: MAX_FILE_BYTES + 1]
            image = png.without_card(candidate) if png.is_png(candidate) else None
            if image is None:
                warnings.append(f"the avatar {avatar} is not a PNG image: the card's picture is a plain square "
                                "(save the avatar as PNG to keep it)")
        except (OSError, CardError) as exc:
            warnings.append(f"avatar {avatar} unusable ({exc}): a plain image instead")
    assets = _asset_uris(persona, personas_dir, png_icon=avatar if image is not None else None, warnings=warnings)
    card = card_from_persona(persona, v3=v3, assets=assets)
    text = json.dumps(card, ensure_ascii=False, indent=2)
    suffix = "v3" if v3 else "v2"
    if not png_file:
        return text.encode("utf-8"), f"{persona.id}.{suffix}.json", warnings
    chunks = []
    if v3:  # V2 readers get a backfilled chara chunk; this bot (and the spec) prefer ccv3
        v2 = card_from_persona(persona, v3=False, assets=[])
        v2["data"]["creator_notes"] = V3_BACKFILL_NOTE + v2["data"]["creator_notes"]
        chunks.append(("chara", base64.b64encode(json.dumps(v2, ensure_ascii=False).encode())))
        chunks.append(("ccv3", base64.b64encode(text.encode())))
    else:
        chunks.append(("chara", base64.b64encode(text.encode())))
    data = png.with_texts(image if image is not None else png.placeholder_png(), chunks)
    return data, f"{persona.id}.{suffix}.png", warnings


def import_lorebook(
    file: Path, personas_dir: Path, *, name: str | None = None, force: bool = False,
    keep_unknown_macros: bool = False, warnings: list[str] | None = None,
) -> tuple[Path, Lorebook]:
    """Convert a lorebook_v3 / card book / SillyTavern world-info JSON file into personas/lorebooks/NAME.yaml.
    What was cut, dropped or is not supported is appended to `warnings`."""
    notes: list[str] = []
    from bot.personas.lorebooks import lorebook_path, parse_lorebook

    try:
        raw = file.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise CardFormatError(f"cannot read: {exc}", source=file) from exc
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise CardLimitError(f"file is over {MAX_FILE_BYTES} bytes")
        macros = MacroMap(keep_unknown_macros)
        data, cleaned = clean_strings(decode_json(raw, "lorebook"))
        if cleaned:
            notes.append(f"control characters or broken characters were taken out of {cleaned} text(s)")
        fields = lorebook_from_file(data, macros, warnings=notes)
        macros.check()
        notes += macros.warnings()
        try:
            book = Lorebook.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CardFormatError(first["msg"], field=".".join(str(p) for p in first["loc"])) from None
    except CardError as exc:
        raise exc.at(file) from exc.__cause__
    target_name = name or persona_id_for(book.name or file.stem)
    if not re.fullmatch(ID_PATTERN, target_name):
        raise CardFormatError(f"--name {target_name!r}: lowercase letters, digits, - and _")
    path = lorebook_path(personas_dir, target_name)
    if path.exists() and not force:
        raise CardConflict(f"{path} exists: import with --force to replace it, or choose another --name")
    text = lorebook_yaml(book, f"# Imported from {file.name} by `python -m bot personas import-lorebook`.\n")
    try:
        parse_lorebook(path, text)
    except PersonaFileError as exc:
        raise CardFormatError(f"the lorebook does not validate: {exc}", source=file) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"))
    if warnings is not None:
        warnings += notes
    return path, book
