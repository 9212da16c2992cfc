"""Hot reload: persona files edited, broken, removed and added under a running bot (registry,
console engine, and the real Discord bot against the fake Discord)."""

from __future__ import annotations

import asyncio
import io
import os
import queue
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import build_runtime
from bot.errors import PersonaNotFound
from bot.personas.registry import FilePersonaRegistry, PersonaChanges
from bot.settings import Settings
from bot.transports.console import run_console
from tests.discord_fake.harness import DiscordHarness

WAIT_S = 10.0


def edit(path: Path, text: str) -> None:
    """Write a persona file the way editors and `personas import` do: a temp file, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Reloads:
    """Waits for the registry's next reload (its on_reload listener), with a timeout."""

    def __init__(self, registry: Any) -> None:
        self.changes: asyncio.Queue[PersonaChanges] = asyncio.Queue()
        registry.on_reload(self.changes.put_nowait)

    async def next(self) -> PersonaChanges:
        """The next reload that changed a persona (a broken edit reloads and changes nothing)."""

        async def changed() -> PersonaChanges:
            while not (changes := await self.changes.get()):
                pass
            return changes

        return await asyncio.wait_for(changed(), WAIT_S)


def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"personas_reload_s": 0.05})


# -- the registry ------------------------------------------------------------------------------


async def test_broken_edit_keeps_the_last_good_version_and_reports(personas_dir: Path) -> None:
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()
    seen: list[PersonaChanges] = []
    registry.on_reload(seen.append)
    captain = personas_dir / "captain.yaml"
    good = captain.read_text()

    edit(captain, good.replace("name: Captain Redbeard", "name: Captain Bluebeard"))
    assert (await registry.refresh()).changed == {"captain"}
    assert registry.get("captain").name == "Captain Bluebeard"

    edit(captain, good + "generation:\n  top_p: 7\n")  # broken (and a duplicate key)
    await registry.refresh()
    assert registry.get("captain").name == "Captain Bluebeard", "the last good version keeps serving"
    assert registry.stale == {"captain": captain}
    errors = [str(e) for e in registry.errors]
    assert any(e.startswith(f"{captain}:") and "[generation" in e for e in errors), errors
    assert any("still serving the last good version of 'captain'" in e for e in errors)

    captain.unlink()
    assert (await registry.refresh()).removed == {"captain"}
    with pytest.raises(PersonaNotFound):
        registry.get("captain")
    assert registry.errors == []
    assert [c.touched for c in seen] == [{"captain"}, set(), {"captain"}]  # the broken edit changed nothing


async def test_validators_disable_new_personas_and_keep_the_old_version_of_changed_ones(personas_dir: Path) -> None:
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()

    async def no_adapters(personas: list[Any]) -> dict[str, str]:
        return {p.id: "adapter broken" for p in personas if p.adapter}

    registry.add_validator(no_adapters)
    terse = personas_dir / "terse.yaml"
    edit(personas_dir / "newbie.yaml", "id: newbie\nname: N\nsystem_prompt: hi\nadapter: adapters/captain-lora\n")
    edit(terse, terse.read_text() + "adapter: adapters/captain-lora\n")
    await registry.refresh()
    assert "newbie" in registry.disabled and "adapter broken" in registry.disabled["newbie"]
    assert registry.get("terse").adapter is None, "the edit broke it: the old version serves"
    assert any("terse.yaml" in str(e) and "adapter broken" in str(e) for e in registry.errors)


async def test_a_listener_error_does_not_stop_the_reload(personas_dir: Path) -> None:
    registry = FilePersonaRegistry(personas_dir)
    registry.reload()
    registry.on_reload(lambda _: 1 / 0)
    calls: list[PersonaChanges] = []
    registry.on_reload(calls.append)
    (personas_dir / "terse.yaml").unlink()
    await registry.refresh()
    assert [c.removed for c in calls] == [{"terse"}]


# -- the console, chatting while files change -----------------------------------------------------


class LineFeed(io.TextIOBase):
    """A stdin the test types into, line by line, while the console runs."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str] = queue.Queue()

    def readline(self, size: int | None = -1) -> str:
        return self.lines.get(timeout=WAIT_S)

    def isatty(self) -> bool:
        return False


class Transcript(io.StringIO):
    """The console's output; the console writes on the event loop, so an asyncio.Event can tell."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        self.changed.set()
        return super().write(text)

    async def wait_for(self, needle: str) -> None:
        async def until() -> None:
            while needle not in self.getvalue():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), WAIT_S)


async def test_console_applies_edits_to_the_next_message(settings: Settings) -> None:
    stdin, out = LineFeed(), Transcript()
    captain = Path(settings.personas_dir) / "captain.yaml"
    async with build_runtime(fast(settings)) as rt:
        reloads = Reloads(rt.personas)
        console = asyncio.create_task(run_console(rt.engine, "captain", user_name="Sam", conversation="hot",
                                                  stdin=stdin, out=out))
        try:
            stdin.lines.put("one\n")
            await out.wait_for("[Captain Redbeard] You said: one")
            edit(captain, captain.read_text().replace("name: Captain Redbeard", "name: Captain Hotfix"))
            assert (await reloads.next()).changed == {"captain"}
            stdin.lines.put("two\n")
            await out.wait_for("Captain Hotfix> [Captain Hotfix] You said: two")

            edit(captain, "id: captain\nname: [broken\n")
            await asyncio.sleep(0.3)  # a broken edit changes nothing: no reload to wait for
            stdin.lines.put("three\n")
            await out.wait_for("[Captain Hotfix] You said: three")

            captain.unlink()
            assert (await reloads.next()).removed == {"captain"}
            stdin.lines.put("four\n")
            await out.wait_for("[Ada] You said: four")
            assert "no persona 'captain'" in out.getvalue() and "now chatting with Ada" in out.getvalue()
        finally:
            stdin.lines.put("")
            await asyncio.wait_for(console, WAIT_S)


# -- Discord -------------------------------------------------------------------------------------------


@pytest.fixture
async def h(settings: Settings) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness.running(fast(settings)) as harness:
        yield harness


async def test_discord_applies_edits_falls_back_and_shows_admins_the_problems(h: DiscordHarness) -> None:
    reloads = Reloads(h.runtime.personas)
    personas_dir = Path(h.runtime.settings.personas_dir)
    await h.fake.command(h.admin, h.general, "persona set", persona="captain")
    _, before = await h.say(h.alice, h.general, "ahoy", mention_bot=True)
    assert h.reply_of(before)[0].content == "[Captain Redbeard] You said: ahoy"

    captain = personas_dir / "captain.yaml"
    edit(captain, captain.read_text().replace("name: Captain Redbeard", "name: Captain Hotfix"))
    await reloads.next()
    _, edited = await h.say(h.alice, h.general, "again", mention_bot=True)
    assert h.reply_of(edited)[0].content == "[Captain Hotfix] You said: again"

    edit(personas_dir / "terse.yaml", "id: terse\nname: Unit 7\nsystem_prompt: 'today is {date:%Y}'\n")
    answer = await h.fake.command(h.admin, h.general, "persona reload")
    assert "Reloaded personas" in answer["content"]
    assert "terse.yaml:3:" in answer["content"] and "format specs" in answer["content"]
    listed = await h.fake.command(h.admin, h.general, "persona list")
    assert "terse.yaml:3:" in listed["content"] and "Unit 7" in listed["content"]
    for_users = await h.fake.command(h.alice, h.general, "persona list")
    assert "terse.yaml" not in for_users["content"], "problems are for admins"
    refused = await h.fake.command(h.alice, h.general, "persona reload")
    assert "Manage Channels" in refused["content"]

    captain.unlink()
    await reloads.next()
    _, fallback = await h.say(h.alice, h.general, "still there?", mention_bot=True)
    assert h.reply_of(fallback)[0].content == "[Ada] You said: still there?"
