"""Character Card V2/V3 import and export: field mapping, round trips, PNG and CHARX containers."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bot.cards import CardConflict, CardMacroError, export_card, import_card, import_lorebook
from bot.cards.errors import CardFormatError
from bot.cards.png import read_chunks, text_of
from bot.domain.character import DEFAULT_CARD_SYSTEM_PROMPT
from bot.domain.messages import StoredTurn
from bot.domain.persona import Persona
from bot.domain.prompt import PromptContext, build_prompt
from bot.personas.loader import load_directory
from tests.cards_data import charx, png_card, tiny_png, v2_card, v3_card


def write(path: Path, data: bytes | dict[str, Any]) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return path


def reimport(persona: Persona, source_dir: Path, tmp_path: Path, *, v3: bool, png: bool = False) -> Persona:
    """Export `persona`, then import the exported file into a fresh directory."""
    data, name, _ = export_card(persona, source_dir, v3=v3, png_file=png)
    target = tmp_path / "second"
    target.mkdir(exist_ok=True)
    return import_card(write(tmp_path / name, data), target).persona


def test_v2_fields_map_onto_the_persona(tmp_path: Path) -> None:
    result = import_card(write(tmp_path / "sera.json", v2_card()), tmp_path / "personas")
    p = result.persona
    assert result.path == tmp_path / "personas" / "seraphina.yaml"
    assert (p.id, p.name, p.version) == ("seraphina", "Seraphina", "1.4")
    assert p.description == "A gentle forest guardian. Works best with a slow pace."  # creator_notes: not a prompt
    assert p.system_prompt == DEFAULT_CARD_SYSTEM_PROMPT + " Write in third person."  # {{original}}
    assert p.character.description == ("{persona_name} is a guardian spirit of the forest. She speaks softly to "
                                        "{user_name}.\nHer hair glows {{like starlight}}.")
    assert p.character.personality == "caring, protective, {persona_name} is patient"
    assert p.greeting == "*Seraphina kneels beside you.* Rest, {user_name}. You are safe here."
    assert p.alternate_greetings == ("*The forest hums.* You're awake, {user_name}.", "Back again, {user_name}?")
    assert p.post_history_instructions == "Stay in character as {persona_name}; never speak for {user_name}."
    assert [(e.user, e.assistant) for e in p.examples] == [
        ("Who are you?", "I am Seraphina.\nI guard this forest."), ("Are you real?", "As real as the trees, User.")]
    assert p.greeting_in_prompt and p.identity is not None and p.identity.name == "Seraphina"
    assert p.card is not None and p.card.tags == ("fantasy", "female", "guardian") and p.card.creator == "tester"
    assert p.card.extensions == {"talkativeness": "0.5", "fav": False, "world": "Eldoria",
                                 "x_frontend": {"nested": [1, 2, {"deep": None}]}}
    book = p.lorebook
    assert book is not None and (book.name, book.scan_depth, book.token_budget, book.recursive_scanning) == (
        "Eldoria", 4, 300, True)
    glade, wolves, guard, unused, note = book.entries
    assert (glade.id, glade.keys, glade.position, glade.priority, glade.comment) == (
        1, ("glade", "clearing"), "before_character", 5, "The glade")
    assert glade.extensions == {"probability": 100, "useProbability": True, "group": ""}
    assert (wolves.position, wolves.depth, wolves.role, wolves.logic, wolves.case_sensitive) == (
        "at_depth", 2, "user", "not_any", True)
    assert (wolves.match_whole_words, wolves.scan_depth, wolves.exclude_recursion) == (True, 3, True)
    assert guard.keys == ("Seraphina",) and guard.constant and not unused.enabled
    assert (note.id, note.constant, note.content, note.position) == (
        "st-depth-prompt", True, "{persona_name} never harms the innocent.", "at_depth")
    assert load_directory(tmp_path / "personas").personas["seraphina"] == p, "an ordinary persona file"


def test_v3_fields_assets_and_decorators(tmp_path: Path) -> None:
    card = write(tmp_path / "sera.png", png_card(ccv3=v3_card()))
    result = import_card(card, tmp_path / "personas", persona_id="sera")
    p = result.persona
    assert p.nickname == "Sera" and p.group_greetings == ("*Seraphina looks at the group.* Welcome, travellers.",)
    assert p.card is not None and p.card.spec == "chara_card_v3" and p.card.source == (
        "https://example.org/cards/seraphina",)
    assert (p.card.creation_date, p.card.modification_date) == (1700000000, 1710000000)
    assert p.card.creator_notes_multilingual["fr"] == "Une gardienne douce."
    assert [(a.type, a.uri) for a in p.card.assets] == [
        ("icon", "assets/sera/icon/main.png"), ("background", "assets/sera/background/glade.png"),
        ("emotion", "https://example.org/happy.png")]
    assert p.identity is not None and p.identity.avatar_path == "assets/sera/icon/main.png"
    avatar = (tmp_path / "personas" / p.identity.avatar_path).read_bytes()
    assert avatar == tiny_png(), "the card image without its card chunks"
    assert (tmp_path / "personas/assets/sera/background/glade.png").read_bytes() == tiny_png(b"\x00\xff\x00")
    by_id = {e.id: e for e in p.lorebook.entries}  # type: ignore[union-attr]
    dragons, moon = by_id["dragons"], by_id["moon"]
    assert (dragons.use_regex, dragons.position, dragons.depth, dragons.role) == (True, "at_depth", 1, "assistant")
    assert dragons.content == "Dragons sleep under the hills." and dragons.keys == ("/dra(g|k)on(s)?/i",)
    assert (moon.only_after, moon.greeting, moon.decorators) == (2, 1, ("@@ignore_on_max_context",))
    assert moon.content == "The moon is full tonight."


def test_the_imported_persona_prompts_like_the_card(tmp_path: Path) -> None:
    p = import_card(write(tmp_path / "c.json", v3_card()), tmp_path / "personas").persona
    history = [StoredTurn("user", "Where am I?", user_id="u1", speaker="Ann"), StoredTurn("assistant", "A glade.")]
    prompt = build_prompt(p, history, "Is that a dragon?", PromptContext(user_name="Ann"), context_window=8192,
                          count=lambda t: len(t.split()), max_turns=10, max_history_tokens=4000, speaker_id="u1")
    system = prompt.messages[0].content
    assert system.startswith("Write Sera's next reply in a fictional chat between Sera and Ann.")
    assert "Sera is a guardian spirit" in system and "Sera's personality: caring" in system
    assert "Scenario: Ann wakes up in Sera's glade" in system
    assert "The glade heals those Sera protects." in system, "'glade' in the scan window"
    assert "Sera has guarded Eldoria for centuries." in system, "constant"
    assert ("assistant", "Dragons sleep under the hills.") in [(m.role, m.content) for m in prompt.messages]
    assert prompt.messages[-1].content == "Stay in character as Sera; never speak for Ann."
    assert prompt.lore == ("persona#3", "persona#1", "persona#dragons", "persona#st-depth-prompt")


@pytest.mark.parametrize("v3", [False, True], ids=["card-v2", "card-v3"])
def test_json_round_trip_gives_the_same_persona(tmp_path: Path, v3: bool) -> None:
    source = tmp_path / "personas"
    card = v3_card() if v3 else v2_card()
    first = import_card(write(tmp_path / "card.json", card), source).persona
    second = reimport(first, source, tmp_path, v3=v3)
    assert second == first
    if v3:  # the data: URL background comes back as the same file
        assert (tmp_path / "second/assets/seraphina/background/glade.png").read_bytes() == (
            source / "assets/seraphina/background/glade.png").read_bytes()


@pytest.mark.parametrize("v3", [False, True], ids=["card-v2", "card-v3"])
def test_png_round_trip_keeps_the_avatar(tmp_path: Path, v3: bool) -> None:
    source = tmp_path / "personas"
    data = png_card(ccv3=v3_card()) if v3 else png_card(v2_card())
    first = import_card(write(tmp_path / "card.png", data), source).persona
    exported, name, warnings = export_card(first, source, v3=v3, png_file=True)
    assert warnings == []
    keywords = [t[0] for c in read_chunks(exported) if (t := text_of(c))]
    assert keywords == (["chara", "ccv3"] if v3 else ["chara"]), "V3 PNGs carry a V2 backfill too"
    second = import_card(write(tmp_path / name, exported), tmp_path / "second").persona
    assert second == first
    assert first.identity is not None and first.identity.avatar_path is not None
    assert (tmp_path / "second" / first.identity.avatar_path).read_bytes() == (
        source / first.identity.avatar_path).read_bytes() == tiny_png()


def test_charx_import_and_v3_round_trip(tmp_path: Path) -> None:
    card = v3_card(icon_uri="embeded://assets/icon/images/main.png")
    data = charx(card, {"assets/icon/images/main.png": tiny_png(b"\xff\x00\x00"), "x_app.json": b"{}"})
    first = import_card(write(tmp_path / "sera.charx", data), tmp_path / "personas").persona
    assert first.identity is not None and first.identity.avatar_path == "assets/seraphina/icon/main.png"
    assert (tmp_path / "personas" / first.identity.avatar_path).read_bytes() == tiny_png(b"\xff\x00\x00")
    assert reimport(first, tmp_path / "personas", tmp_path, v3=True) == first


def test_v2_backfill_is_ignored_when_ccv3_is_present(tmp_path: Path) -> None:
    old = v2_card()
    old["data"]["name"] = "Old Name"
    p = import_card(write(tmp_path / "c.png", png_card(old, ccv3=v3_card())), tmp_path / "p").persona
    assert p.name == "Seraphina" and p.card is not None and p.card.spec == "chara_card_v3"


def test_v1_cards_import(tmp_path: Path) -> None:
    v1 = {k: v2_card()["data"][k] for k in ("name", "description", "personality", "scenario", "first_mes",
                                             "mes_example")}
    p = import_card(write(tmp_path / "v1.json", v1), tmp_path / "p").persona
    assert p.card is not None and p.card.spec == "chara_card_v1" and len(p.examples) == 2


def test_a_persona_written_by_hand_exports_and_comes_back(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "lorebooks").mkdir()
    (personas / "lorebooks" / "sea.yaml").write_text("entries:\n  - id: 1\n    keys: [ship]\n    content: Ships.\n")
    (personas / "captain.yaml").write_text(
        "id: captain\nname: Captain Redbeard\nversion: '2.0'\n"
        "system_prompt: You are {persona_name}. Arr, {user_name}!\n"
        "greeting: Ahoy!\nexamples:\n  - user: Hi\n    assistant: Arr!\ngeneration:\n  temperature: 0.3\n"
        "speakers:\n  format: '[{name}] {text}'\nlorebooks: [sea]\n"
        "lorebook:\n  entries:\n    - id: 1\n      keys: [rum]\n      content: Rum is gone.\n      only_every: 2\n")
    persona = load_directory(personas).personas["captain"]
    again = reimport(persona, personas, tmp_path, v3=True)
    assert again.system_prompt == persona.system_prompt and again.generation == persona.generation
    assert again.speakers == persona.speakers and again.examples == persona.examples
    assert [e.id for e in again.lorebook.entries] == [1, "sea-1"], "shared books merge into the card's book"  # type: ignore[union-attr]
    assert again.lorebook.entries[0].only_every == 2  # type: ignore[union-attr]


def test_unknown_macros_fail_clearly_or_stay_literal(tmp_path: Path) -> None:
    card = v2_card()
    card["data"]["first_mes"] = "You find {{calc::1+1}} coins."
    card["data"]["alternate_greetings"] = ["{{#if rain}}Wet.{{/if}}"]
    path = write(tmp_path / "c.json", card)
    with pytest.raises(CardMacroError, match=r"c\.json: \[data\.first_mes\] unknown macros \{\{calc::1\+1\}\}, "
                       r"\{\{#if rain\}\}, \{\{/if\}\} \(also in data\.alternate_greetings\.0\).*"
                       r"--keep-unknown-macros") as raised:
        import_card(path, tmp_path / "p")
    assert raised.value.macros == ["calc::1+1", "#if rain", "/if"]
    assert not (tmp_path / "p").exists()
    p = import_card(path, tmp_path / "p", keep_unknown_macros=True).persona
    assert p.greeting == "You find {{{{calc::1+1}}}} coins."
    exported, _, _ = export_card(p, tmp_path / "p", v3=False)
    assert json.loads(exported)["data"]["first_mes"] == "You find {{calc::1+1}} coins."


def test_existing_persona_needs_force_and_force_replaces_assets(tmp_path: Path) -> None:
    personas = tmp_path / "p"
    path = write(tmp_path / "c.png", png_card(ccv3=v3_card()))
    import_card(path, personas)
    before = sorted(p.relative_to(personas) for p in personas.rglob("*"))
    with pytest.raises(CardConflict, match="--force"):
        import_card(path, personas)
    assert sorted(p.relative_to(personas) for p in personas.rglob("*")) == before
    plain = write(tmp_path / "plain.json", v2_card())
    result = import_card(plain, personas, force=True)
    assert result.persona.identity is not None and result.persona.identity.avatar_path is None
    assert not (personas / "assets" / "seraphina").exists(), "the old assets went with the old persona"
    with pytest.raises(CardConflict, match="defined in"):
        (personas / "other.yaml").write_text("id: dup\nname: D\nsystem_prompt: x\n")
        import_card(plain, personas, persona_id="dup", force=True)


def test_bad_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CardFormatError, match="--id"):
        import_card(write(tmp_path / "c.json", v2_card()), tmp_path / "p", persona_id="../evil")


def test_import_lorebook_from_sillytavern_world_info(tmp_path: Path) -> None:
    world = {"name": "Eldoria World", "entries": {
        "0": {"uid": 0, "key": ["glade"], "keysecondary": ["night"], "comment": "Glade at night", "content": "Glows.",
              "constant": False, "selective": True, "selectiveLogic": 3, "order": 50, "position": 4, "depth": 1,
              "role": 2, "disable": False, "probability": 80, "displayIndex": 1},
        "1": {"uid": 1, "key": ["river"], "content": "Flows.", "disable": True, "order": 10, "position": 1,
              "displayIndex": 0},
    }}
    path, book = import_lorebook(write(tmp_path / "world.json", world), tmp_path / "personas")
    assert path == tmp_path / "personas" / "lorebooks" / "eldoria-world.yaml"
    river, glade = book.entries
    assert (river.id, river.enabled, river.position) == (1, False, "after_character")
    assert (glade.logic, glade.position, glade.depth, glade.role, glade.insertion_order) == (
        "and_all", "at_depth", 1, "assistant", 50)
    assert glade.extensions == {"probability": 80, "display_index": 1}
    v3 = {"spec": "lorebook_v3", "data": {"entries": [{"keys": ["x"], "content": "X", "extensions": {},
                                                         "enabled": True, "insertion_order": 1, "use_regex": False}]}}
    path, book = import_lorebook(write(tmp_path / "v3.json", v3), tmp_path / "personas", name="x-book")
    assert path.name == "x-book.yaml" and book.entries[0].content == "X"
    with pytest.raises(CardConflict):
        import_lorebook(tmp_path / "v3.json", tmp_path / "personas", name="x-book")


def test_png_text_is_base64_of_utf8_json(tmp_path: Path) -> None:
    card = v2_card()
    card["data"]["name"] = "Zoë 🌸"
    data = tiny_png(extra=[])
    from tests.cards_data import text_chunk

    data = tiny_png(extra=[text_chunk("chara", base64.b64encode(json.dumps(card, ensure_ascii=False).encode()))])
    p = import_card(write(tmp_path / "z.png", data), tmp_path / "p", persona_id="zoe").persona
    assert p.name == "Zoë 🌸"
