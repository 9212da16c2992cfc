"""Hand-built cards shaped like the files real users bring, built in code (no downloads).

Each mimics what one tool writes, field for field where it matters (from their source code):
- SillyTavern (src/endpoints/characters.js charaFormatData, convertWorldInfoToCharacterBook;
  src/character-card-parser.js write): V1 fields duplicated at the top, `data`, ST's extensions,
  a character book converted from world info (`use_regex: true` on every entry, `display_index`...),
  a PNG with a `chara` chunk and a `ccv3` chunk holding the same JSON with the spec changed.
- SillyTavern world-info export (public/scripts/world-info.js): entries by uid, `key`/`keysecondary`.
- Chub (chub.ai): V2 with `extensions.chub`, long HTML/markdown creator notes, voice-sample examples,
  {{random}} in greetings.
- RisuAI (src/ts/characterCards.ts exportCharacterCard): CHARX with card.json (4-space indent),
  `embeded://assets/<type>/<kind>/<name>.<ext>`, x_meta/*.json, module.risum; the "CHARX in JPEG";
  V3 PNGs with `__asset:N` assets in `chara-ext-asset_:N` chunks; `character_version: "undefined"`.
- Agnai / Backyard (Faraday): V2 cards without ids, priorities, a card in an iTXt chunk.
- Legacy: V1 JSON with `tags` as a string and `creatorcomment`; the Pygmalion/Gradio format.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import zipfile
import zlib
from typing import Any

from tests.cards_data import PNG_SIGNATURE, chunk, text_chunk, tiny_png

Card = dict[str, Any]

ST_ENTRY_EXTENSIONS = {
    "exclude_recursion": False, "probability": 100, "useProbability": True, "depth": 4, "selectiveLogic": 0,
    "group": "", "group_override": False, "group_weight": 100, "prevent_recursion": False,
    "delay_until_recursion": False, "scan_depth": None, "match_whole_words": None, "use_group_scoring": False,
    "case_sensitive": None, "automation_id": "", "role": 0, "vectorized": False, "sticky": 0, "cooldown": 0,
    "delay": 0,
}


def st_entry(uid: int, keys: list[str], content: str, *, position: int = 1, comment: str = "",
             **extensions: Any) -> dict[str, Any]:
    """An entry as SillyTavern's convertWorldInfoToCharacterBook writes it into a card."""
    return {
        "id": uid, "keys": keys, "secondary_keys": extensions.pop("secondary_keys", []), "comment": comment,
        "content": content, "constant": extensions.pop("constant", False), "selective": True,
        "insertion_order": extensions.pop("order", 100), "enabled": True,
        "position": "before_char" if position == 0 else "after_char",
        "use_regex": True,  # "ST keys are always regex": every entry, though ST reads them as plain text
        "extensions": {**ST_ENTRY_EXTENSIONS, "position": position, "display_index": uid, **extensions},
    }


def sillytavern_card() -> Card:
    """A SillyTavern export (V2 JSON; the same object is what its PNG `chara` chunk holds)."""
    data = {
        "name": "Aria Vance",
        "description": "{{char}} is a starship engineer on the *Meridian*. She talks to {{user}} like an old "
                       "friend.\nShe keeps a log: {\"fuel\": 0.42, \"crew\": 7}.",
        "personality": "dry humour, loyal, hates {{random:paperwork,meetings}}",
        "scenario": "{{user}} is the new pilot. The ship drifts near Kepler Station.",
        "first_mes": "*{{char}} slides out from under the console, wiping grease off her hands.*\n\n"
                     "\"You must be {{user}}. Welcome aboard the *Meridian*.\"",
        "mes_example": "<START>\n{{user}}: What's wrong with the ship?\n{{char}}: *She sighs.* Everything. "
                       "The reactor coughs,\nthe vents whistle, and the coffee machine is sentient.\n"
                       "<START>\n{{char}}: *muttering* If {{user}} touches my wrench again...\n"
                       "{{user}}: I heard that.\n{{char}}: You were meant to.",
        "creator_notes": "Sci-fi slow burn. Works best with 8k context.",
        "system_prompt": "{{original}}\nAvoid repetition. {{// keep this short}}",
        "post_history_instructions": "[Stay in character as {{char}}. Describe {{char}}'s actions in *asterisks*.]",
        "tags": ["sci-fi", "female", "engineer"],
        "creator": "vance_fan",
        "character_version": "2.1",
        "alternate_greetings": ["*The alarm blares.* \"{{user}}! Grab the extinguisher!\"",
                                "{{char}} waves from the cargo bay. \"Long time no see, {{user}}.\""],
        "extensions": {
            "talkativeness": "0.5", "fav": False, "world": "Meridian",
            "depth_prompt": {"prompt": "{{char}} never lies about the ship's condition.", "depth": 4,
                             "role": "system"},
        },
        "group_only_greetings": [],
        "character_book": {
            "entries": [
                st_entry(0, ["reactor", "core"], "The Meridian's reactor is a salvaged Mk II fusion core.",
                         comment="Reactor"),
                st_entry(1, ["Kepler Station", "station"], "Kepler Station trades in water ice. (Docking fee: "
                         "200 cr.)", comment="Station", order=50),
                st_entry(2, ["c++", "(code)", "Dr. Ito?"], "Dr. Ito wrote the ship's C++ firmware.",
                         comment="Firmware", position=4, depth=2, role=1),
                st_entry(3, ["fusion"], "Fusion cores need deuterium refills every 90 days.", comment="Fusion",
                         order=120),
            ],
            "name": "Meridian",
        },
    }
    top = {k: data[k] for k in ("name", "description", "personality", "scenario", "first_mes", "mes_example")}
    return {
        **top, "creatorcomment": data["creator_notes"], "avatar": "none", "chat": "Aria Vance - 2024-9-28 @01h 02m",
        "talkativeness": "0.5", "fav": False, "tags": data["tags"], "spec": "chara_card_v2", "spec_version": "2.0",
        "data": data, "create_date": "2024-9-28 @01h 02m 36s 000ms",
    }


def sillytavern_png(card: Card | None = None) -> bytes:
    """As SillyTavern writes a PNG: its `chara` chunk, then `ccv3` with the same JSON as V3 (ST 1.12+)."""
    v2 = card or sillytavern_card()
    v3 = {**copy.deepcopy(v2), "spec": "chara_card_v3", "spec_version": "3.0"}
    texts = [text_chunk(keyword, base64.b64encode(json.dumps(c, ensure_ascii=False).encode()))
             for keyword, c in (("chara", v2), ("ccv3", v3))]
    return tiny_png(b"\x30\x60\x90", extra=texts)


def world_info_export() -> Card:
    """A SillyTavern world-info file (World Info panel -> export)."""
    def entry(uid: int, key: list[str], content: str, **more: Any) -> dict[str, Any]:
        return {"uid": uid, "key": key, "keysecondary": more.pop("keysecondary", []),
                "comment": more.pop("comment", ""), "content": content, "constant": more.pop("constant", False),
                "vectorized": False, "selective": True,
                "selectiveLogic": more.pop("selectiveLogic", 0), "addMemo": True, "order": more.pop("order", 100),
                "position": more.pop("position", 0), "disable": more.pop("disable", False),
                "excludeRecursion": False, "preventRecursion": False, "delayUntilRecursion": False,
                "probability": 100, "useProbability": True, "depth": more.pop("depth", 4), "group": "",
                "groupOverride": False, "groupWeight": 100, "scanDepth": None, "caseSensitive": None,
                "matchWholeWords": None, "useGroupScoring": None, "automationId": "", "role": more.pop("role", None),
                "sticky": 0, "cooldown": 0, "delay": 0, "displayIndex": more.pop("displayIndex", uid)}

    return {"entries": {
        "0": entry(0, ["Kepler Station"], "Kepler Station orbits a gas giant.", comment="Station", displayIndex=1),
        "1": entry(1, ["pirates"], "The Crimson Fleet raids ships near the belt.", keysecondary=["belt", "raid"],
                   selectiveLogic=0, order=20, comment="Pirates", displayIndex=0),
        "2": entry(2, ["/\\bcaptain\\b/i"], "Captain Osei commands the station guard.", position=4, depth=1,
                   role=0, comment="Captain", displayIndex=2),
        "3": entry(3, ["old rumour"], "A disabled entry.", disable=True, displayIndex=3),
    }}


def chub_card() -> Card:
    """A Chub (chub.ai) download: extensions.chub, long creator notes, voice-sample examples, no book."""
    notes = ("<p><strong>Marlowe</strong> is a noir detective.</p>\n" + "<p>Tips: use slow pacing. " * 200 +
             "</p>\n<img src=\"https://example.org/banner.png\">")
    return {
        "spec": "chara_card_v2", "spec_version": "2.0",
        "data": {
            "name": "Marlowe", "description": "{{char}} is a tired private eye in 1947 Los Angeles.",
            "personality": "", "scenario": "", "creator_notes": notes, "system_prompt": "",
            "post_history_instructions": "", "character_version": "main", "creator": "noirfan",
            "first_mes": "{{random::Rain again.::Another night, another case.}} *{{char}} looks up at {{user}}.*",
            "mes_example": "<START>\n{{char}}: *He lights a cigarette.* The city never sleeps. Neither do I.\n"
                           "<START>\n{{char}}: Trouble walks in on two legs. Usually in heels.",
            "alternate_greetings": ["*The door creaks.* \"We're closed, {{user}}.\""],
            "tags": ["Detective", "Noir", "Male", "SFW"],
            "character_book": None,
            "extensions": {"chub": {"id": 123456, "full_path": "noirfan/marlowe", "related_lorebooks": [],
                                    "background_image": None, "preset": None, "extensions": [],
                                    "expressions": None, "alt_expressions": {}}, "fav": False,
                           "talkativeness": "0.5", "world": "", "depth_prompt": {"prompt": "", "depth": 4}},
        },
    }


def risu_card(icon: str = "embeded://assets/icon/image/main.png") -> Card:
    """RisuAI's V3 export (createBaseV3): risuai extensions, decorators, `undefined` version."""
    return {
        "spec": "chara_card_v3", "spec_version": "3.0",
        "data": {
            "name": "하나", "description": "{{char}}는 숲의 정령이다. {{user}}를 돕는다.", "personality": "",
            "scenario": "", "first_mes": "안녕, {{user}}! 🌸", "mes_example": "", "creator_notes": "",
            "system_prompt": "", "post_history_instructions": "", "alternate_greetings": [], "tags": [],
            "creator": "", "character_version": "undefined", "nickname": "Hana", "source": [],
            "group_only_greetings": ["모두들 안녕! *{{char}} waves at everyone.*"],
            "creation_date": 1735000000, "modification_date": 1735000500,
            "character_book": {
                "scan_depth": None, "token_budget": None, "recursive_scanning": None,
                "extensions": {"risu_fullWordMatching": False},
                "entries": [
                    {"keys": ["숲", "forest"], "content": "@@depth 0\n@@role assistant\n숲은 깊고 조용하다.",
                     "extensions": {"risu_case_sensitive": False, "risu_loreCache": None}, "enabled": True,
                     "insertion_order": 100, "constant": False, "selective": False, "name": "숲", "comment": "숲",
                     "case_sensitive": False, "use_regex": False, "mode": "normal", "folder": None},
                    {"keys": ["f-1a2b"], "content": "", "extensions": {}, "enabled": True, "insertion_order": 100,
                     "constant": False, "selective": False, "name": "Places", "comment": "Places",
                     "case_sensitive": False, "use_regex": False, "mode": "folder"},
                    {"keys": ["spirit", "정령"], "secondary_keys": ["moon"], "content":
                        "@@match_full_word\nSpirits grow stronger under the moon.", "extensions": {},
                     "enabled": True, "insertion_order": 90, "constant": False, "selective": True,
                     "name": "Spirits", "comment": "Spirits", "case_sensitive": False, "use_regex": False,
                     "mode": "normal", "folder": "f-1a2b"},
                ],
            },
            "extensions": {"risuai": {"bias": [], "viewScreen": "none", "utilityBot": False, "sdData": [],
                                      "backgroundHTML": "", "license": "", "additionalText": "",
                                      "largePortrait": False, "lorePlus": False, "inlayViewScreen": False,
                                      "newGenData": None},
                           "depth_prompt": {"depth": 0, "prompt": ""}},
            "assets": [
                {"type": "icon", "uri": icon, "name": "main", "ext": "png"},
                {"type": "x-risu-asset", "uri": "embeded://assets/other/image/웃음 1.webp", "name": "웃음 1",
                 "ext": "webp"},
                {"type": "emotion", "uri": "embeded://assets/emotion/image/happy.png", "name": "happy", "ext": "png"},
            ],
        },
    }


def risu_charx(card: Card | None = None, *, jpeg: bool = False) -> bytes:
    """A CHARX as RisuAI's CharXWriter writes it (or after a JPEG image: its "CHARX in JPEG")."""
    members = {
        "assets/icon/image/main.png": tiny_png(b"\xee\x88\x99"),
        "x_meta/main.json": json.dumps({"type": "PNG"}).encode(),
        "assets/other/image/웃음 1.webp": b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10",
        "x_meta/웃음 1.json": json.dumps({"type": "WEBP"}).encode(),
        "assets/emotion/image/happy.png": tiny_png(b"\xff\xdd\x00"),
        "module.risum": b"\x6f\x00\x00\x00\x10binary module data",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card or risu_card(), indent=4, ensure_ascii=False))
        for name, data in members.items():
            archive.writestr(name, data)
    zipped = buffer.getvalue()
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00" + b"\x11" * 200 + b"\xff\xd9" + zipped) if jpeg else zipped


def risu_png() -> bytes:
    """RisuAI's V3 PNG: the card in `ccv3` only, its assets as `chara-ext-asset_:N` chunks (`__asset:N`)."""
    card = risu_card(icon="ccdefault:")
    card["data"]["assets"] = [
        {"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"},
        {"type": "emotion", "uri": "__asset:1", "name": "happy", "ext": "png"},
    ]
    texts = [text_chunk("chara-ext-asset_:1", base64.b64encode(tiny_png(b"\xff\xdd\x00"))),
             text_chunk("ccv3", base64.b64encode(json.dumps(card, ensure_ascii=False).encode()))]
    return tiny_png(b"\x20\x40\x20", extra=texts)


def agnai_card() -> Card:
    """An Agnai export: V2, entries without ids, priorities, `<USER>`/`<BOT>` examples, markdown labels."""
    return {
        "spec": "chara_card_v2", "spec_version": "2.0",
        "data": {
            "name": "Professor Quill", "description": "<BOT> teaches alchemy at the academy.",
            "personality": "pedantic, kind", "scenario": "<USER> is a first-year student.",
            "first_mes": "Ah, <USER>. Late again.", "creator_notes": "", "system_prompt": "",
            "post_history_instructions": "", "alternate_greetings": [], "tags": [], "creator": "",
            "character_version": "", "extensions": {},
            "mes_example": "<START>\n**<USER>:** What is mercury?\n**<BOT>:** A metal, a god and a planet. "
                           "Pick one.\n<START>\nYou: Can I leave early?\nProfessor Quill: No.",
            "character_book": {"name": "Academy", "entries": [
                {"keys": ["mercury", "quicksilver"], "content": "Mercury is forbidden in first-year labs.",
                 "enabled": True, "insertion_order": 10, "priority": 20, "name": "Mercury", "extensions": {}},
                {"keys": "library, archive", "content": "The library closes at nine.", "enabled": True,
                 "insertion_order": 20, "priority": 5, "name": "Library", "extensions": {}},
            ]},
        },
    }


def itxt_png(card: Card) -> bytes:
    """A card written by a tool that uses a compressed iTXt chunk, placed before the image data."""
    text = base64.b64encode(json.dumps(card, ensure_ascii=False).encode())
    itxt = chunk(b"iTXt", b"chara\x00\x01\x00\x00\x00" + zlib.compress(text))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + itxt + chunk(b"IDAT", zlib.compress(b"\0\1\2\3\0\1\2\3" * 2)) \
        + chunk(b"IEND", b"")


def backyard_card() -> Card:
    """A Backyard (Faraday) PNG card's JSON: V2, examples by name, a null-laden book."""
    return {
        "spec": "chara_card_v2", "spec_version": "2.0",
        "data": {
            "name": "Nova", "description": "Nova is an AI companion on a research station.", "personality": None,
            "scenario": "{user} and Nova monitor the ice core drill.", "first_mes": "Morning, {{user}}. Coffee?",
            "mes_example": "{{user}}: Status?\nNova: Drill at 340 metres. Coffee at 0 cups.", "creator_notes": None,
            "system_prompt": None, "post_history_instructions": None, "alternate_greetings": None, "tags": None,
            "creator": None, "character_version": None, "extensions": None,
            "character_book": {"entries": [{"keys": ["drill"], "content": "The drill jams below 400 metres.",
                                            "enabled": None, "insertion_order": None, "extensions": None}]},
        },
    }


def v1_card() -> Card:
    """A V1 card (TavernAI era): flat fields, tags as one string, ST's creatorcomment."""
    return {"name": "Old Tom", "description": "A lighthouse keeper.", "personality": "grumpy", "scenario": "",
            "first_mes": "Who goes there?", "mes_example": "<START>\n{{user}}: Hello?\n{{char}}: Go away.",
            "creatorcomment": "From 2023.", "tags": "old, grumpy, sea", "talkativeness": 0.5}


def gradio_card() -> Card:
    """The Pygmalion/Gradio format, before V1 names."""
    return {"char_name": "Pyg", "char_persona": "A friendly robot.", "char_greeting": "Beep boop, {{user}}!",
            "world_scenario": "A workshop.", "example_dialogue": "You: Hi\nPyg: Beep!"}


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
