"""Cards as SillyTavern, Chub, RisuAI, Agnai and Backyard users bring them (tests/cards_fixtures.py):
each imports, passes `personas check`, prompts as its tool would, and survives export -> import."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from bot.cards import CardConflict, CardError, CardMacroError, export_card, import_card, import_lorebook
from bot.cards.errors import CardFormatError, CardLimitError
from bot.cards.macros import MacroMap
from bot.cards.mapping import SILENT_USER, parse_examples
from bot.domain.messages import StoredTurn
from bot.domain.persona import Persona
from bot.domain.prompt import AssembledPrompt, PromptContext, build_prompt
from bot.personas.check import check_personas
from bot.personas.loader import load_directory
from bot.settings import Settings
from tests import cards_fixtures as tools
from tests.cards_data import PNG_SIGNATURE, chunk, text_chunk, tiny_png

#: name -> (file bytes, the format an export gives back: (v3, png))
CARDS: dict[str, tuple[bytes, tuple[bool, bool]]] = {
    "sillytavern.json": (json.dumps(tools.sillytavern_card()).encode(), (False, False)),
    "sillytavern.png": (tools.sillytavern_png(), (True, True)),
    "chub.json": (json.dumps(tools.chub_card()).encode(), (False, False)),
    "risu.charx": (tools.risu_charx(), (True, False)),
    "risu.jpeg": (tools.risu_charx(jpeg=True), (True, False)),
    "risu.png": (tools.risu_png(), (True, True)),
    "agnai.json": (json.dumps(tools.agnai_card()).encode(), (False, False)),
    "backyard.png": (tools.itxt_png(tools.backyard_card()), (False, True)),
    "v1.json": (json.dumps(tools.v1_card()).encode(), (False, False)),
    "gradio.json": (json.dumps(tools.gradio_card()).encode(), (False, False)),
}


def write(path: Path, data: bytes | dict[str, Any]) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data, ensure_ascii=False).encode())
    return path


def imported(tmp_path: Path, name: str, **kwargs: Any) -> Persona:
    return import_card(write(tmp_path / name, CARDS[name][0]), tmp_path / "personas", **kwargs).persona


def prompt_of(p: Persona, text: str, history: list[StoredTurn] | None = None, user: str = "Ann",
              greeting: int | None = 0) -> AssembledPrompt:
    return build_prompt(p, history or [], text, PromptContext(user_name=user), context_window=16_000,
                        count=lambda t: len(t.split()), max_turns=20, max_history_tokens=8_000, speaker_id="u1",
                        greeting=greeting)


def test_every_tool_card_imports_and_passes_personas_check(settings: Settings, tmp_path: Path) -> None:
    ids = {}
    for name, (data, _) in CARDS.items():
        persona_id = name.replace(".", "-")
        ids[name] = import_card(write(tmp_path / name, data), settings.personas_dir, persona_id=persona_id).persona
    report = check_personas(settings)
    assert report.ok, report.problems
    assert {ids[n].name for n in CARDS} == {"Aria Vance", "Marlowe", "하나", "Professor Quill", "Nova", "Old Tom",
                                            "Pyg"}
    assert ids["gradio.json"].greeting == "Beep boop, {user_name}!" and ids["gradio.json"].examples[0].user == "Hi"
    assert ids["v1.json"].card is not None and ids["v1.json"].card.tags == ("old", "grumpy", "sea")
    assert ids["v1.json"].description == "From 2023." and ids["v1.json"].card.spec == "chara_card_v1"
    assert ids["backyard.png"].lorebook is not None and ids["backyard.png"].lorebook.entries[0].enabled
    assert ids["backyard.png"].character.scenario == "{{user}} and Nova monitor the ice core drill.", \
        "single braces in prose are literal text"


@pytest.mark.parametrize("name", sorted(CARDS))
def test_a_card_exported_in_its_own_format_imports_as_the_same_persona(tmp_path: Path, name: str) -> None:
    first = imported(tmp_path, name)
    v3, png = CARDS[name][1]
    data, file_name, warnings = export_card(first, tmp_path / "personas", v3=v3, png_file=png)
    assert warnings == []
    second = import_card(write(tmp_path / file_name, data), tmp_path / "again").persona
    if first.card is not None and first.card.spec == "chara_card_v1":  # V1 cards export as V2
        first = first.model_copy(update={"card": first.card.model_copy(update={"spec": "chara_card_v2"})})
    assert second == first


def test_sillytavern_card_reads_and_prompts_as_in_sillytavern(tmp_path: Path) -> None:
    p = imported(tmp_path, "sillytavern.png")
    assert p.card is not None and p.card.spec == "chara_card_v3", "ST's ccv3 chunk is read first"
    assert p.identity is not None and p.identity.avatar_path == "assets/aria-vance/icon/main.png"
    assert p.card.extensions == {"talkativeness": "0.5", "fav": False, "world": "Meridian"}
    assert [(e.user, e.assistant) for e in p.examples] == [
        ("What's wrong with the ship?", "*She sighs.* Everything. The reactor coughs,\nthe vents whistle, and the "
         "coffee machine is sentient."),
        (SILENT_USER, "*muttering* If User touches my wrench again..."),  # a block the character opens
        ("I heard that.", "You were meant to."),
    ]
    book = p.lorebook
    assert book is not None and all(not e.use_regex for e in book.entries), "ST's use_regex: true is not regex"
    history = [StoredTurn("user", "Is the fusion drive fine?", user_id="u1", speaker="Ann"),
               StoredTurn("assistant", "Mostly.")]
    prompt = prompt_of(p, "And the reactor? We dock at Kepler Station soon. Is the c++ code fine?", history)
    system = prompt.messages[0].content
    assert system.startswith("Write Aria Vance's next reply in a fictional chat between Aria Vance and Ann.\n"
                             "Avoid repetition.\nAria Vance is a starship engineer"), "{{original}} and {{// ...}}"
    assert 'She keeps a log: {"fuel": 0.42, "crew": 7}.' in system, "JSON in prose stays as written"
    assert "Aria Vance's personality: dry humour, loyal, hates paperwork" in system
    assert system.index("Kepler Station trades") < system.index("salvaged Mk II"), "insertion order 50 < 100"
    roles = [(m.role, m.content) for m in prompt.messages]
    assert ("user", "Dr. Ito wrote the ship's C++ firmware.") in roles, "at depth 2, as the user (ST role 1)"
    assert roles[-1] == ("system", "[Stay in character as Aria Vance. Describe Aria Vance's actions in *asterisks*.]")
    assert prompt.lore == ("persona#1", "persona#0", "persona#2", "persona#st-depth-prompt")
    assert "deuterium" not in system, "'fusion' is three messages back: past the scan depth of 2"
    opening = roles.index(("user", "Is the fusion drive fine?")) - 1
    assert roles[opening] == ("assistant", "*Aria Vance slides out from under the console, wiping grease off her "
                                           "hands.*\n\n\"You must be Ann. Welcome aboard the *Meridian*.\"")


def test_chub_card_keeps_long_creator_notes_and_voice_samples(tmp_path: Path) -> None:
    p = import_card(write(tmp_path / "c.json", tools.chub_card()), tmp_path / "personas").persona
    notes = tools.chub_card()["data"]["creator_notes"]
    assert len(p.description) == 2000 and p.description.endswith("…") and p.card is not None
    assert p.card.creator_notes == notes, "kept whole for the export"
    exported, _, _ = export_card(p, tmp_path / "personas", v3=False)
    assert json.loads(exported)["data"]["creator_notes"] == notes
    assert [e.user for e in p.examples] == [SILENT_USER, SILENT_USER]
    assert p.greeting == "Rain again. *{persona_name} looks up at {user_name}.*"
    assert p.version == "main" and p.card.tags == ("Detective", "Noir", "Male", "SFW")
    assert p.card.extensions["chub"]["full_path"] == "noirfan/marlowe"
    assert "depth_prompt" in p.card.extensions and p.lorebook is None, "an empty character note is no lore"


def test_risu_charx_assets_decorators_and_the_jpeg_variant(tmp_path: Path) -> None:
    p = imported(tmp_path, "risu.charx")
    assert (p.id, p.name, p.nickname, p.version) == ("hana", "하나", "Hana", "1"), "no 'undefined' version"
    assert p.card is not None and [a.uri for a in p.card.assets] == [
        "assets/hana/icon/main.png", "assets/hana/x-risu-asset/웃음_1.webp", "assets/hana/emotion/happy.png"]
    personas = tmp_path / "personas"
    assert (personas / "assets/hana/icon/main.png").read_bytes() == tiny_png(b"\xee\x88\x99")
    assert not list(personas.rglob("module.risum")), "RisuAI's module is left alone"
    assert p.group_greetings == ("모두들 안녕! *{persona_name} waves at everyone.*",)
    forest, folder, spirits = p.lorebook.entries  # type: ignore[union-attr]
    assert (forest.position, forest.depth, forest.role, forest.content) == ("at_depth", 0, "assistant",
                                                                             "숲은 깊고 조용하다.")
    assert not folder.enabled, "RisuAI folders only group entries"
    assert spirits.match_whole_words is True and spirits.content == "Spirits grow stronger under the moon."
    prompt = prompt_of(p, "숲에 정령이 있어? Is there a spirit under the moon?")
    assert sorted(prompt.lore) == ["persona#0", "persona#2"]
    assert prompt.messages[-1].content == "숲은 깊고 조용하다." and prompt.messages[-1].role == "assistant"
    jpeg = import_card(write(tmp_path / "risu.jpeg", CARDS["risu.jpeg"][0]), tmp_path / "jpeg").persona
    assert jpeg == p, "the CHARX after a JPEG image reads the same"


def test_agnai_card_labels_and_keys_written_loosely(tmp_path: Path) -> None:
    p = imported(tmp_path, "agnai.json")
    assert [(e.user, e.assistant) for e in p.examples] == [
        ("What is mercury?", "A metal, a god and a planet. Pick one."), ("Can I leave early?", "No.")]
    assert p.character.description == "{persona_name} teaches alchemy at the academy."
    mercury, library = p.lorebook.entries  # type: ignore[union-attr]
    assert mercury.priority == 20 and library.keys == ("library", "archive"), "a comma-separated keys string"
    assert prompt_of(p, "Is the library open? Where is the quicksilver?").lore == ("persona#0", "persona#1"), \
        "priority 20 ranks before priority 5"


@pytest.mark.parametrize(("label", "text", "expected", "dropped"), [
    ("pairs", "<START>\n{{user}}: a\n{{char}}: b\n{{user}}: c\n{{char}}: d", [("a", "b"), ("c", "d")], 0),
    ("no <START>", "{{user}}: a\n{{char}}: b", [("a", "b")], 0),
    ("multi-line turns", "<START>\n{{user}}: a\nmore\n\n{{char}}: b\n\nc", [("a\nmore", "b\n\nc")], 0),
    ("character first", "<START>\n{{char}}: hm\n{{user}}: a\n{{char}}: b", [(SILENT_USER, "hm"), ("a", "b")], 0),
    ("voice sample", "<START>\n{{char}}: *waves*", [(SILENT_USER, "*waves*")], 0),
    ("legacy tokens", "<START>\n<USER>: a\n<BOT>: b", [("a", "b")], 0),
    ("by name and nickname", "<START>\nUser: a\nSeraphina: b\nYou: c\nSera: d", [("a", "b"), ("c", "d")], 0),
    ("markdown labels", "<START>\n**{{user}}:** a\n*{{char}}*: b", [("a", "b")], 0),
    ("asterisk after colon", "<START>\n{{user}}:hi\n{{char}}:*waves*", [("hi", "*waves*")], 0),
    ("CRLF and case", "<start>\r\n{{User}}: a\r\n{{CHAR}}: b", [("a", "b")], 0),
    ("braces", "<START>\n{{user}}: {x}\n{{char}}: {\"a\": 1}", [("{x}", "{\"a\": 1}")], 0),
    ("a question left open", "<START>\n{{user}}: a\n{{char}}: b\n{{user}}: c", [("a", "b")], 1),
    ("text before any label", "<START>\nnarration\n{{user}}: a\n{{char}}: b", [("a", "b")], 1),
])
def test_mes_example_in_all_its_forms(label: str, text: str, expected: list[tuple[str, str]], dropped: int) -> None:
    warnings: list[str] = []
    pairs = parse_examples(text.replace("\r\n", "\n"), MacroMap(), ["Sera", "Seraphina"], warnings)
    assert [(p["user"], p["assistant"]) for p in pairs] == expected, label
    assert len(warnings) == (1 if dropped else 0), warnings


@pytest.mark.parametrize(("text", "template", "noted"), [
    ("{{char}}/{{ Char }}/<BOT>/{{user}}/<USER>/{{notChar}}", "{persona_name}/{persona_name}/{persona_name}/"
     "{user_name}/{user_name}/{user_name}", False),
    ("{{date}} {{isotime}} {{weekday}} {{time_UTC+2}}", "{date} {time} {weekday} {time}", True),
    ("a{{newline}}b{{newline::2}}c{{br}}d", "a\nb\n\nc\nd", False),
    ("a\n{{trim}}\nb", "ab", False),
    ("x{{// note}}{{comment: hi}}{{noop}}y", "xy", False),
    ("{{random::a::b}} {{random:c,d}} {{pick::{{user}}::x}}", "a c {user_name}", True),
    ("{{random::{{char}} waves::{{user}} waves}}", "{persona_name} waves", True),
    ("roll {{roll:d20}} {{roll 6}}", "roll d20 1d6", True),
    ("{{lastMessage}}{{setvar::mood::happy}}{{getvar::mood}}{{mesExamples}}{{persona}}", "", True),
    ("{like this} and {\"json\": {\"a\": 1}}", "{{like this}} and {{\"json\": {{\"a\": 1}}}}", False),
    ("{{reverse:abc}} {{charVersion}}", "cba 2.1", False),
])
def test_macros_map_or_drop_with_a_note(text: str, template: str, noted: bool) -> None:
    macros = MacroMap(version="2.1")
    assert macros.template(text, "data.first_mes") == template
    macros.check()
    assert bool(macros.warnings()) == noted, macros.warnings()


def test_unknown_macros_are_all_named_once_and_the_import_changes_nothing(tmp_path: Path) -> None:
    card = tools.sillytavern_card()
    card["data"]["first_mes"] = "{{#if night}}Dark.{{/if}} {{calc::2*3}}"
    card["data"]["scenario"] = "{{calc::2*3}} {{stats}}"
    with pytest.raises(CardMacroError) as raised:
        import_card(write(tmp_path / "c.json", card), tmp_path / "personas")
    error = raised.value
    assert error.macros == ["calc::2*3", "stats", "#if night", "/if"]
    assert error.fields == ["data.first_mes", "data.scenario"] and error.field == "data.scenario"
    assert "--keep-unknown-macros" in str(error) and "edit the card" in str(error)
    assert not (tmp_path / "personas").exists()


@pytest.mark.parametrize(("label", "card", "check"), [
    ("numbers as text", {"name": 42, "description": 3.5, "character_version": 2},
     lambda p: (p.name, p.character.description, p.version) == ("42", "3.5", "2")),
    ("tags as one string", {"name": "T", "tags": "fantasy, elf,, "},
     lambda p: p.card.tags == ("fantasy", "elf")),
    ("one greeting as a string", {"name": "T", "first_mes": "a", "alternate_greetings": "b"},
     lambda p: p.alternate_greetings == ("b",)),
    ("null everywhere", {"name": "T", "description": None, "tags": [None, "x"], "extensions": None,
                         "character_book": None, "alternate_greetings": [None, "b"]},
     lambda p: p.card.tags == ("x",) and p.alternate_greetings == ("b",)),
    ("extensions: []", {"name": "T", "extensions": []}, lambda p: p.card.extensions == {}),
    ("entries by uid", {"name": "T", "character_book": {"entries": {"7": {"uid": 7, "key": ["gate"],
                                                                           "content": "Shut.", "order": 3}}}},
     lambda p: (p.lorebook.entries[0].id, p.lorebook.entries[0].keys, p.lorebook.entries[0].insertion_order)
     == (7, ("gate",), 3)),
    ("world-info entry names in a card", {"name": "T", "character_book": {"entries": [
        {"key": ["a"], "keysecondary": ["b"], "content": "c", "disable": True, "position": 0}]}},
     lambda p: (p.lorebook.entries[0].keys, p.lorebook.entries[0].secondary_keys, p.lorebook.entries[0].enabled,
                p.lorebook.entries[0].position) == (("a",), ("b",), False, "before_character")),
    ("duplicate entry ids", {"name": "T", "character_book": {"entries": [
        {"id": 1, "keys": ["a"], "content": "x"}, {"id": 1, "keys": ["b"], "content": "y"}]}},
     lambda p: [e.id for e in p.lorebook.entries] == [1, "1-2"]),
    ("control characters", {"name": "T\x00", "first_mes": "hi\x07 there\x1b[0m"},
     lambda p: (p.name, p.greeting) == ("T", "hi there[0m")),
    ("character note as text", {"name": "T", "extensions": {"depth_prompt": {"prompt": "Note.", "depth": "2",
                                                                             "role": 1}}},
     lambda p: (p.lorebook.entries[0].depth, p.lorebook.entries[0].role) == (2, "user")),
])
def test_sloppy_fields_real_cards_have(tmp_path: Path, label: str, card: dict[str, Any], check: Any) -> None:
    path = write(tmp_path / "c.json", {"spec": "chara_card_v2", "spec_version": "2.0", "data": card})
    assert check(import_card(path, tmp_path / "p").persona), label


def test_a_v2_card_without_data_reads_its_top_fields(tmp_path: Path) -> None:
    card = {"spec": "chara_card_v2", "name": "Flat", "first_mes": "Hi!", "description": "d"}
    result = import_card(write(tmp_path / "c.json", card), tmp_path / "p")
    assert (result.persona.name, result.persona.greeting) == ("Flat", "Hi!")
    assert "without its `data` object" in result.warnings[0]


def card_png(*chunks: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + b"".join(chunks) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) \
        + chunk(b"IEND", b"")


B64 = base64.b64encode(json.dumps({"spec": "chara_card_v2", "data": {"name": "Zoë 李 🌸",
                                                                     "first_mes": "こんにちは"}}).encode())


@pytest.mark.parametrize(("label", "data"), [
    ("zTXt", card_png(chunk(b"zTXt", b"chara\0\0" + zlib.compress(B64)))),
    ("iTXt", card_png(chunk(b"iTXt", b"chara\0\0\0en\0\0" + B64))),
    ("keyword case", card_png(text_chunk("Chara", B64))),
    ("before the image, bytes after IEND", card_png(text_chunk("chara", B64)) + b"\0trailing"),
])
def test_png_text_chunks_as_other_tools_write_them(tmp_path: Path, label: str, data: bytes) -> None:
    p = import_card(write(tmp_path / "c.png", data), tmp_path / "p").persona
    assert (p.id, p.name, p.greeting) == ("zoe", "Zoë 李 🌸", "こんにちは"), label
    assert p.identity is not None and p.identity.avatar_path is not None
    avatar = (tmp_path / "p" / p.identity.avatar_path).read_bytes()
    assert b"chara" not in avatar.lower(), "the avatar has no card chunk left in it"


@pytest.mark.parametrize(("label", "data", "error", "message"), [
    ("JPEG", b"\xff\xd8\xff\xe0\0\x10JFIF" + b"\0" * 50, CardFormatError, "a JPEG image.*PNG or JSON card"),
    ("WebP", b"RIFF\x24\0\0\0WEBPVP8 " + b"\0" * 50, CardFormatError, "a WebP image"),
    ("GIF", b"GIF89a" + b"\0" * 50, CardFormatError, "a GIF image"),
    ("empty", b"", CardFormatError, "empty"),
    ("YAML", b"name: x\n", CardFormatError, "not a PNG, a CHARX"),
    ("zTXt bomb", card_png(chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (40 * 2**20))) ),
     CardLimitError, "inflates past"),
    ("corrupt zTXt", card_png(chunk(b"zTXt", b"chara\0\0not zlib")), CardFormatError, "does not inflate"),
    ("Backyard archive", tools.zip_of({"manifest.json": b'{"schemaVersion": 1}', "characters/x/character.json": b"{}"}),
     CardFormatError, "Backyard AI archive.*PNG character card"),
])
def test_other_files_get_a_clear_error(tmp_path: Path, label: str, data: bytes, error: type[CardError],
                                       message: str) -> None:
    with pytest.raises(error, match=message):
        import_card(write(tmp_path / "c.bin", data), tmp_path / "p")
    assert not (tmp_path / "p").exists(), label


def big_card(entries: int) -> dict[str, Any]:
    book = {"name": "Atlas", "scan_depth": 3, "entries": [
        {"id": i, "keys": [f"place-{i}-x"], "content": f"Place {i} is a town of {i} souls.", "insertion_order": i,
         "extensions": {}} for i in range(entries)]}
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Atlas", "first_mes": "Where to?", "character_book": book,
        "extensions": {"depth_prompt": {"prompt": "Atlas knows every road.", "depth": 2, "role": "system"}}}}


def test_a_large_card_book_lives_in_its_own_lorebook_file(settings: Settings, tmp_path: Path) -> None:
    personas = settings.personas_dir
    result = import_card(write(tmp_path / "atlas.json", big_card(1500)), personas)
    p = result.persona
    assert result.lorebook == personas / "lorebooks" / "atlas.yaml"
    assert p.lorebooks == ("atlas",) and p.lorebook is not None
    assert [e.id for e in p.lorebook.entries] == ["st-depth-prompt"], "the character note stays inline"
    assert (personas / "atlas.yaml").stat().st_size < 2000
    assert check_personas(settings).ok
    prompt = prompt_of(p, "Take me to place-1234-x.")
    assert sorted(prompt.lore) == ["atlas#1234", "persona#st-depth-prompt"]
    assert "Place 1234 is a town of 1234 souls." in prompt.messages[0].content
    data, name, _ = export_card(p, personas, v3=False)
    card = json.loads(data)
    assert len(card["data"]["character_book"]["entries"]) == 1500 and card["data"]["character_book"]["name"] == "Atlas"
    assert card["data"]["extensions"]["depth_prompt"]["prompt"] == "Atlas knows every road."
    assert import_card(write(tmp_path / name, data), tmp_path / "again").persona == p

    small = import_card(write(tmp_path / "small.json", big_card(3)), personas, persona_id="atlas", force=True)
    assert small.lorebook is None and small.persona.lorebooks == ()
    assert not (personas / "lorebooks" / "atlas.yaml").exists(), "the old book went with the old persona"

    (personas / "lorebooks" / "atlas.yaml").write_text("entries: []\n")  # someone's own shared book
    with pytest.raises(CardConflict, match="not this persona's card lorebook"):
        import_card(write(tmp_path / "atlas.json", big_card(1500)), personas, force=True)
    assert (personas / "lorebooks" / "atlas.yaml").read_text() == "entries: []\n"
    assert load_directory(personas).personas["atlas"] == small.persona, "a failed import changes nothing"


def test_world_info_export_becomes_a_shared_book_that_fires(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    path, book = import_lorebook(write(tmp_path / "Kepler.json", tools.world_info_export()), personas)
    assert path == personas / "lorebooks" / "kepler.yaml"
    assert [e.id for e in book.entries] == [1, 0, 2, 3], "in displayIndex order"
    assert book.entries[0].extensions["display_index"] == 0 and book.entries[0].extensions["group_override"] is False
    personas.joinpath("pilot.yaml").write_text("id: pilot\nname: Pilot\nsystem_prompt: You fly.\n"
                                               "lorebooks: [kepler]\n")
    p = load_directory(personas).personas["pilot"]
    assert prompt_of(p, "Pirates ahead!").lore == (), "pirates needs belt or raid too"
    prompt = prompt_of(p, "Pirates in the belt, tell the Captain, then dock at Kepler Station. Any old rumour?")
    assert prompt.lore == ("kepler#1", "kepler#0", "kepler#2")
    assert ("system", "Captain Osei commands the station guard.") in [(m.role, m.content) for m in prompt.messages]


def test_nested_and_lore_macros_in_an_imported_book(tmp_path: Path) -> None:
    card = tools.sillytavern_card()
    card["data"]["character_book"]["entries"][0]["content"] = "{{char}}'s reactor {{random::hums::purrs}}."
    card["data"]["character_book"]["entries"][0]["keys"] = ["{{char}}'s reactor", "reactor"]
    result = import_card(write(tmp_path / "c.json", card), tmp_path / "p")
    entry = result.persona.lorebook.entries[0]  # type: ignore[union-attr]
    assert entry.keys == ("Aria Vance's reactor", "reactor") and entry.content == "{persona_name}'s reactor hums."
    assert any("data.character_book.entries.0.content" in w for w in result.warnings)


def test_assets_a_card_points_to_but_does_not_carry_are_left_out_with_a_warning(tmp_path: Path) -> None:
    card = tools.risu_card()  # RisuAI's card.json, taken out of its CHARX
    result = import_card(write(tmp_path / "card.json", card), tmp_path / "p")
    assert result.persona.identity is not None and result.persona.identity.avatar_path is None
    assert len(result.warnings) == 3 and "is a file of a CHARX, and this is a JSON card" in result.warnings[0]
    charx = tools.risu_charx(card | {"data": {**card["data"], "assets": [
        *card["data"]["assets"], {"type": "emotion", "uri": "embeded://assets/emotion/image/sad.png", "name": "sad",
                                  "ext": "png"}]}})
    again = import_card(write(tmp_path / "h.charx", charx), tmp_path / "q")
    assert again.warnings == ["asset sad left out: the CHARX has no file 'assets/emotion/image/sad.png'"]
    assert again.persona.identity is not None and again.persona.identity.avatar_path == "assets/hana/icon/main.png"


def test_a_card_book_can_become_a_shared_lorebook(tmp_path: Path) -> None:
    path, book = import_lorebook(write(tmp_path / "aria.json", tools.sillytavern_card()), tmp_path / "p")
    assert path.name == "meridian.yaml" and len(book.entries) == 4 and not any(e.use_regex for e in book.entries)
    with pytest.raises(CardFormatError, match="no lorebook"):
        import_lorebook(write(tmp_path / "chub.json", tools.chub_card()), tmp_path / "p")
    card = tools.chub_card()
    card["data"]["extensions"]["world"] = "Noir City"
    warnings = import_card(write(tmp_path / "m.json", card), tmp_path / "q").warnings
    assert any("world info 'Noir City'" in w and "import-lorebook" in w for w in warnings)


def test_a_png_export_says_when_the_avatar_is_not_a_png(tmp_path: Path) -> None:
    card = tools.risu_card(icon="embeded://assets/other/image/웃음 1.webp")
    p = import_card(write(tmp_path / "h.charx", tools.risu_charx(card)), tmp_path / "p").persona
    assert p.identity is not None and p.identity.avatar_path == "assets/hana/icon/main.webp"
    data, _, warnings = export_card(p, tmp_path / "p", v3=True, png_file=True)
    assert data.startswith(PNG_SIGNATURE) and warnings == [
        "the avatar assets/hana/icon/main.webp is not a PNG image: the card's picture is a plain square (save the "
        "avatar as PNG to keep it)"]


@pytest.mark.parametrize(("name", "shown"), [("Nurse: Joy", "Nurse - Joy"), ("Ash #2", "Ash 2"),
                                             ("Discord Mod", "Mod"), ("@everyone", "everyone (character)"),
                                             ("Aria", "Aria")])
def test_the_discord_name_leaves_out_what_discord_refuses(tmp_path: Path, name: str, shown: str) -> None:
    path = write(tmp_path / "c.json", {"spec": "chara_card_v2", "data": {"name": name, "first_mes": "Hi"}})
    result = import_card(path, tmp_path / "p", persona_id="x")
    assert result.persona.name == name and result.persona.identity is not None
    assert result.persona.identity.name == shown
    assert any("webhooks post under" in w for w in result.warnings) == (name != shown)


def test_sillytavern_features_this_bot_lacks_are_named(tmp_path: Path) -> None:
    world = tools.world_info_export()
    world["entries"]["0"].update(probability=30, group="weather")
    world["entries"]["1"].update(group="weather", sticky=2)
    warnings: list[str] = []
    import_lorebook(write(tmp_path / "w.json", world), tmp_path / "p", warnings=warnings)
    assert warnings == [
        "entries: 1 entry with a probability below 100%; here they always fire",
        "entries: 2 entries with an inclusion group; here every entry of a group may fire",
        "entries: 1 entry with timed effects (sticky, cooldown, delay); here they fire whenever their keys match",
    ]
    assert import_card(write(tmp_path / "a.json", tools.sillytavern_card()), tmp_path / "q").warnings == [
        "{{random}} has no random choice here: the first option is always used (data.personality)"], \
        "SillyTavern's defaults (probability 100, no group, sticky 0) are no news"


def test_cards_other_writers_wrap_differently(tmp_path: Path) -> None:
    card = {"spec": "chara_card_v2", "data": {"name": "Raw", "first_mes": "Hi"}}
    raw_json = card_png(text_chunk("chara", json.dumps(card).encode()))  # JSON as it is, not base64
    url_safe = card_png(text_chunk("chara", base64.urlsafe_b64encode(json.dumps(
        {"spec": "chara_card_v2", "data": {"name": "Ünïcode ~~~ ???", "first_mes": "Hi"}}).encode()).rstrip(b"=")))
    utf16 = json.dumps(card).encode("utf-16")  # Notepad's "Unicode"
    empty_data_name = {"spec": "chara_card_v2", "name": "Top", "data": {"name": "", "first_mes": "Hi"}}
    for n, data in enumerate([raw_json, url_safe, utf16, json.dumps(empty_data_name).encode()]):
        p = import_card(write(tmp_path / f"c{n}", data), tmp_path / f"p{n}").persona
        assert p.greeting == "Hi" and p.name in ("Raw", "Ünïcode ~~~ ???", "Top")
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a CHARX unzipped and zipped again as a folder
        archive.writestr("hana/card.json", json.dumps(tools.risu_card(), ensure_ascii=False))
        archive.writestr("hana/assets/icon/image/main.png", tiny_png())
    p = import_card(write(tmp_path / "folder.charx", buffer.getvalue()), tmp_path / "q").persona
    assert p.identity is not None and p.identity.avatar_path == "assets/hana/icon/main.png"
