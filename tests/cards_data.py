"""Character cards built in the tests from the published field lists (no downloads).

V2: malfoyslastname/character-card-spec-v2 spec_v2.md (TavernCardV2, CharacterBook).
V3: kwaroran/character-card-spec-v3 SPEC_V3.md (CharacterCardV3, Lorebook, assets, decorators).
The PNG and zip writers here are independent of bot.cards (struct + zlib + zipfile), so the reader
is tested against files it did not write.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tiny_png(color: bytes = b"\x10\x80\xf0", extra: list[bytes] | None = None) -> bytes:
    """A 2x2 RGB PNG; `extra` chunks go before IEND."""
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    rows = (b"\0" + color * 2) * 2
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + b"".join(
        extra or []) + chunk(b"IEND", b"")


def text_chunk(keyword: str, text: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text)


def png_card(card: dict[str, Any] | None = None, *, ccv3: dict[str, Any] | None = None,
             extra: list[bytes] | None = None) -> bytes:
    chunks = list(extra or [])
    if card is not None:
        chunks.append(text_chunk("chara", base64.b64encode(json.dumps(card).encode())))
    if ccv3 is not None:
        chunks.append(text_chunk("ccv3", base64.b64encode(json.dumps(ccv3).encode())))
    return tiny_png(extra=chunks)


def charx(card: dict[str, Any], files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card))
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def v2_book() -> dict[str, Any]:
    """Every CharacterBook field of the V2 spec, plus SillyTavern's entry extensions."""
    return {
        "name": "Eldoria",
        "description": "The world around the glade.",
        "scan_depth": 4,
        "token_budget": 300,
        "recursive_scanning": True,
        "extensions": {"x_tool": {"kept": True}},
        "entries": [
            {
                "keys": ["glade", "clearing"], "content": "The glade heals those {{char}} protects.",
                "extensions": {"position": 0, "selectiveLogic": 0, "probability": 100, "useProbability": True,
                               "depth": 4, "role": 0, "group": ""},
                "enabled": True, "insertion_order": 10, "case_sensitive": False,
                "name": "glade", "priority": 5, "id": 1, "comment": "The glade",
                "selective": True, "secondary_keys": [], "constant": False, "position": "before_char",
            },
            {
                "keys": ["wolf", "wolves"], "content": "Shadow wolves hunt at dusk near {{user}}'s path.",
                "extensions": {"position": 4, "depth": 2, "role": 1, "selectiveLogic": 2, "match_whole_words": True,
                               "scan_depth": 3, "exclude_recursion": True, "prevent_recursion": False},
                "enabled": True, "insertion_order": 20, "case_sensitive": True, "name": "wolves", "priority": 3,
                "id": 2, "comment": "", "selective": True, "secondary_keys": ["tamed"], "constant": False,
                "position": "after_char",
            },
            {
                "keys": ["{{char}}"], "content": "{{char}} has guarded Eldoria for centuries.",
                "extensions": {}, "enabled": True, "insertion_order": 5, "constant": True, "id": 3,
            },
            {"keys": ["unused"], "content": "Disabled lore.", "extensions": {}, "enabled": False,
             "insertion_order": 1, "id": 4},
        ],
    }


def v2_card() -> dict[str, Any]:
    """A TavernCardV2 with every field of the spec filled."""
    return {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Seraphina",
            "description": "{{char}} is a guardian spirit of the forest. She speaks softly to {{user}}.\n"
                           "Her hair glows {like starlight}.",
            "personality": "caring, protective, <BOT> is patient",
            "scenario": "{{user}} wakes up in {{char}}'s glade after an attack.",
            "first_mes": "*Seraphina kneels beside you.* Rest, {{user}}. You are safe here.",
            "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: I am Seraphina.\nI guard this forest.\n"
                           "<START>\n<USER>: Are you real?\nSeraphina: As real as the trees, {{user}}.",
            "creator_notes": "A gentle forest guardian. Works best with a slow pace.",
            "system_prompt": "{{original}} Write in third person.",
            "post_history_instructions": "Stay in character as {{char}}; never speak for {{user}}.",
            "alternate_greetings": ["*The forest hums.* You're awake, {{user}}.", "Back again, {{user}}?"],
            "character_book": v2_book(),
            "tags": ["fantasy", "female", "guardian"],
            "creator": "tester",
            "character_version": "1.4",
            "extensions": {
                "talkativeness": "0.5", "fav": False, "world": "Eldoria",
                "depth_prompt": {"prompt": "{{char}} never harms the innocent.", "depth": 4, "role": "system"},
                "x_frontend": {"nested": [1, 2, {"deep": None}]},
            },
        },
    }


def v3_card(icon_uri: str = "ccdefault:") -> dict[str, Any]:
    """A CharacterCardV3 with every field of the spec filled (assets, decorators, regex keys...)."""
    book = v2_book()
    book["entries"] += [
        {"keys": [r"/dra(g|k)on(s)?/i"], "content": "@@depth 1\n@@role assistant\n\nDragons sleep under the hills.",
         "extensions": {}, "enabled": True, "insertion_order": 30, "use_regex": True, "id": "dragons"},
        {"keys": ["moon"], "content": "@@activate_only_after 2\n@@risu_special 3\n@@@is_greeting 1\n"
                                      "@@ignore_on_max_context\nThe moon is full tonight.",
         "extensions": {}, "enabled": True, "insertion_order": 40, "use_regex": False, "id": "moon"},
    ]
    data = v2_card()["data"]
    data.update({
        "character_book": book,
        "nickname": "Sera",
        "creator_notes_multilingual": {"en": "A gentle forest guardian.", "fr": "Une gardienne douce."},
        "source": ["https://example.org/cards/seraphina"],
        "group_only_greetings": ["*Seraphina looks at the group.* Welcome, travellers."],
        "creation_date": 1700000000,
        "modification_date": 1710000000,
        "assets": [
            {"type": "icon", "uri": icon_uri, "name": "main", "ext": "png"},
            {"type": "background", "uri": "data:image/png;base64," + base64.b64encode(tiny_png(b"\x00\xff\x00"))
             .decode(), "name": "glade", "ext": "png"},
            {"type": "emotion", "uri": "https://example.org/happy.png", "name": "happy", "ext": "png"},
        ],
    })
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}
