"""Imported cards in a running bot: the README's worked example verbatim, a shared conversation with
a SillyTavern card, lorebook files edited under a running bot, and group greetings in Discord.
Real Redis, the real engine (and discord.py against the fake Discord), a scripted model."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Runtime, build_runtime
from bot.cards import import_card
from bot.domain.messages import ChatRequest, Speaker
from bot.personas.registry import FilePersonaRegistry
from bot.personas.watch import PersonaWatcher
from bot.settings import Settings
from tests import cards_fixtures as tools
from tests.discord_fake.harness import DiscordHarness
from tests.test_engine import Scripted

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> tuple[dict[str, object], list[tuple[str, str]]]:
    """The worked example's card (the JSON block) and its prompt listing (the `text` block after it)."""
    section = README.read_text().split("### Worked example: import a card, chat, see its lorebook fire", 1)[1]
    card = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    listing = section.split("```text\n", 1)[1].split("```", 1)[0]
    rows = []
    for line in listing.splitlines():
        if line.startswith(" "):  # a continuation of the row above (the system message)
            rows[-1] = (rows[-1][0], rows[-1][1] + "\n" + line.strip())
        else:
            role, text = line.split(None, 1)
            rows.append((role, re.sub(r"\s{2,}\(.*\)$", "", text).strip()))
    return card, rows


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with build_runtime(settings, model_provider=Scripted()) as rt:
        yield rt


async def test_the_readme_worked_example_works_verbatim(settings: Settings, tmp_path: Path) -> None:
    card, listing = readme_example()
    path = tmp_path / "lighthouse.json"
    path.write_text(json.dumps(card))
    result = import_card(path, settings.personas_dir)
    p = result.persona
    assert (p.id, len(p.alternate_greetings) + 1, len(p.examples)) == ("maren", 2, 1) and result.warnings == []
    assert sum(len(s.book.entries) for s in p.lore_sources) == 3
    async with build_runtime(settings, model_provider=Scripted()) as rt:
        greeting = await rt.engine.greeting(p, "friend", conversation_id="console")
        assert greeting == "*Maren holds up a lantern.* Inside, friend, before the sea takes you."
        done = await rt.engine.reply(ChatRequest("console", Speaker("local", "friend"), "A storm wrecked our ship!",
                                                 persona_id="maren"))
        record = await rt.feedback.get(done.reply_id)
    assert record is not None and record.lorebook_entries == ["persona#2", "persona#3"]
    assert [(m["role"], m["content"]) for m in record.prompt_messages] == listing


async def test_a_sillytavern_card_in_a_shared_conversation(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "aria.png"
    path.write_bytes(tools.sillytavern_png())
    import_card(path, settings.personas_dir)
    async with build_runtime(settings, model_provider=Scripted()) as rt:
        def ask(user: str, name: str, text: str) -> ChatRequest:
            return ChatRequest("discord:channel:1", Speaker(user, name), text, persona_id="aria-vance", group=True)

        await rt.engine.reply(ask("u1", "Alice", "Hi! I'm Alice, I fix reactors."))
        done = await rt.engine.reply(ask("u2", "Bob", "What does Alice fix?"))
        record = await rt.feedback.get(done.reply_id)
    assert record is not None
    messages = [(m["role"], m["content"]) for m in record.prompt_messages]
    assert "fictional chat between Aria Vance and Bob." in messages[0][1], "{{user}} is whoever speaks now"
    assert ("user", "Alice: Hi! I'm Alice, I fix reactors.") in messages
    assert messages[-2:] == [("user", "Bob: What does Alice fix?"), (
        "system", "[Stay in character as Aria Vance. Describe Aria Vance's actions in *asterisks*.]")]
    assert "persona#0" in record.lorebook_entries, "'reactors' is in the scan window (the turn before)"
    assert record.persona_version == "2.1" and record.greeting == 0


async def test_editing_a_lorebook_file_takes_effect_without_a_restart(personas_dir: Path) -> None:
    (personas_dir / "lorebooks").mkdir()
    book = personas_dir / "lorebooks" / "world.yaml"
    book.write_text("entries:\n  - id: gate\n    keys: [gate]\n    content: The gate is shut.\n")
    (personas_dir / "guard.yaml").write_text("id: guard\nname: Guard\nsystem_prompt: You guard.\n"
                                             "lorebooks: [world]\n")
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()
    watcher = PersonaWatcher(registry, interval=0.05)
    watcher.start()
    try:
        assert await watcher.poll() is None, "nothing changed yet"
        tmp = book.with_name(".world.yaml.tmp")
        tmp.write_text("entries:\n  - id: gate\n    keys: [gate]\n    content: The gate is open.\n")
        os.replace(tmp, book)
        changes = await watcher.poll()
        assert changes is not None and changes.changed == {"guard"}
        assert registry.get("guard").lore_sources[0].book.entries[0].content == "The gate is open."

        new = personas_dir / "lorebooks" / "sea.yaml"
        new.write_text("entries:\n  - keys: [ship]\n    content: Ships.\n")
        (personas_dir / "guard.yaml").write_text("id: guard\nname: Guard\nsystem_prompt: You guard.\n"
                                                 "lorebooks: [world, sea]\n")
        await watcher.poll()
        assert [s.ref for s in registry.get("guard").lore_sources] == ["world", "sea"]
        new.write_text("entries: [{keys: [ship], content: Big ships.}]\n")
        changes = await watcher.poll()
        assert changes is not None and changes.changed == {"guard"}, "a new book file is watched too"

        book.write_text("entries: [oops\n")  # broken: the last good version keeps serving
        await watcher.poll()
        assert registry.get("guard").lore_sources[0].book.entries[0].content == "The gate is open."
        assert any("world.yaml" in str(e) for e in registry.errors)
    finally:
        await watcher.stop()


async def test_group_greetings_in_shared_places_only(settings: Settings) -> None:
    (settings.personas_dir / "hana.yaml").write_text(
        "id: hana\nname: Hana\nsystem_prompt: You are {persona_name}.\ngreeting: Hi {user_name}!\n"
        "group_greetings: ['Hello, everyone!']\ngreeting_pick: 1\ngreeting_in_prompt: true\n")
    async with DiscordHarness.running(settings.model_copy(update={"default_persona": "hana"})) as h:
        _, in_guild = await h.say(h.alice, h.general, "", mention_bot=True)
        _, in_dm = await h.say(h.alice, h.fake.dm_channel(h.alice), "")
        _, replied = await h.say(h.bob, h.general, "hi all", mention_bot=True)
        record = await h.runtime.engine.feedback.get(replied.reply_id or "")
    assert in_guild.kind == in_dm.kind == "greeted"
    assert h.reply_of(in_guild)[0].content == "Hello, everyone!"
    assert h.reply_of(in_dm)[0].content == "Hi alice!", "no group greeting in a DM"
    assert record is not None and record.greeting == 1, "the reply knows the greeting the channel saw"
    assert {"role": "assistant", "content": "Hello, everyone!"} in record.prompt_messages


async def test_engine_greeting_knows_group_places(runtime: Runtime, settings: Settings) -> None:
    card = tools.risu_card()
    path = settings.personas_dir.parent / "hana.json"
    path.write_text(json.dumps(card, ensure_ascii=False))
    import_card(path, settings.personas_dir)
    runtime.personas.reload()
    p = runtime.personas.get("hana")
    assert await runtime.engine.greeting(p, "Ann", choice=1) == "안녕, Ann! 🌸", "no such option outside groups"
    assert await runtime.engine.greeting(p, "Ann", choice=1, group=True) == "모두들 안녕! *Hana waves at everyone.*"
    await asyncio.sleep(0)
