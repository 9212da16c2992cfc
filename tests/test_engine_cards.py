"""ChatEngine with card personas, real Redis, scripted model: lore in reply records, greetings,
speaker names kept in memory, records and turns from before these fields existed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from bot.app import Runtime, build_runtime
from bot.domain.feedback import ReplyRecord
from bot.domain.messages import ChatRequest, Speaker
from bot.settings import Settings
from tests.test_engine import Scripted

PERSONA = """\
id: seer
name: Seraphina
system_prompt: You are {persona_name}, talking to {user_name}.
greeting: Welcome, {user_name}.
alternate_greetings: ["The forest greets you.", "Back again?"]
greeting_pick: sticky
post_history_instructions: Never break character.
lorebooks: [forest]
lorebook:
  entries:
    - id: glade
      keys: [glade]
      content: The glade heals the wounded.
"""

FOREST = """\
entries:
  - id: wolves
    keys: [wolf, wolves]
    content: Shadow wolves hunt at dusk.
"""


@pytest.fixture
async def runtime(settings: Settings, personas_dir: Path) -> AsyncIterator[Runtime]:
    (personas_dir / "seer.yaml").write_text(PERSONA)
    (personas_dir / "lorebooks").mkdir()
    (personas_dir / "lorebooks" / "forest.yaml").write_text(FOREST)
    async with build_runtime(settings, model_provider=Scripted()) as rt:
        yield rt


def ask(text: str, user: str = "u1", name: str = "Ann", conversation: str = "c1") -> ChatRequest:
    return ChatRequest(conversation, Speaker(user, name), text, persona_id="seer")


async def test_the_record_lists_the_lore_that_fired(runtime: Runtime) -> None:
    done = await runtime.engine.reply(ask("Are there wolves near the glade?"))
    record = await runtime.feedback.get(done.reply_id)
    assert record is not None
    assert record.lorebook_entries == ["persona#glade", "forest#wolves"]
    system = record.prompt_messages[0]["content"]
    assert "The glade heals the wounded.\nShadow wolves hunt at dusk." in system
    assert record.prompt_messages[-1] == {"role": "system", "content": "Never break character."}
    quiet = await runtime.engine.reply(ask("Hello", conversation="c2"))
    assert (await runtime.feedback.get(quiet.reply_id)).lorebook_entries == []  # type: ignore[union-attr]


async def test_sticky_greeting_is_one_per_conversation_and_recorded(runtime: Runtime) -> None:
    persona = runtime.personas.get("seer")
    texts = {c: await runtime.engine.greeting(persona, "Ann", conversation_id=c) for c in map(str, range(12))}
    assert len(set(texts.values())) > 1, "conversations get different greetings"
    again = {c: await runtime.engine.greeting(persona, "Ann", conversation_id=c) for c in texts}
    assert again == texts, "and each keeps its own"
    assert await runtime.engine.greeting(persona, "Ann", choice=2) == "Back again?"
    done = await runtime.engine.reply(ask("hi", conversation="7"))
    options = ["Welcome, Ann.", "The forest greets you.", "Back again?"]
    assert done.record.greeting == options.index(texts["7"])


async def test_speaker_names_are_stored_and_old_turns_still_load(runtime: Runtime, redis_url: str) -> None:
    await runtime.engine.reply(ask("I am Ann", user="u1", name="Ann\n<@1>"))
    [user_turn, _] = await runtime.memory.load("c1", 10)
    assert user_turn.speaker == "Ann\n<@1>", "stored as given; cleaned when rendered"
    client = redis.Redis.from_url(redis_url)
    [key] = client.keys("test:mem:*")
    old = {"role": "user", "content": "from the old days", "user_id": "u0", "persona_id": "seer", "at": 1.0}
    client.lpush(key, json.dumps(old))
    client.close()
    done = await runtime.engine.reply(ask("who was here?", user="u2", name="Bo"))
    contents = [m["content"] for m in done.record.prompt_messages[1:]]
    assert contents[:2] == ["User: from the old days", "Ann 1: I am Ann"]
    assert contents[-2] == "Bo: who was here?"


def test_old_and_newer_records_still_load() -> None:
    record = ReplyRecord(
        reply_id="r", conversation_id="c", user_id="u", persona_id="p", persona_version="1", model="m",
        backend="scripted", adapter=None, generation={}, prompt_messages=[], reply="x", latency_s=0.1,
        first_token_s=None, prompt_tokens=1, completion_tokens=1, system_prompt_hash="h",
    )
    data = json.loads(record.to_json())
    del data["lorebook_entries"], data["greeting"]
    old = ReplyRecord.from_json(json.dumps(data))
    assert old.lorebook_entries == [] and old.greeting is None
    newer = ReplyRecord.from_json(json.dumps({**data, "field_from_the_future": 1}))
    assert newer == old


def test_ratings_are_attributed_to_lore_entries() -> None:
    from bot.domain.feedback import RatedReply, lore_attribution

    base = ReplyRecord(
        reply_id="r", conversation_id="c", user_id="u", persona_id="p", persona_version="1", model="m",
        backend="scripted", adapter=None, generation={}, prompt_messages=[], reply="x", latency_s=0.1,
        first_token_s=None, prompt_tokens=1, completion_tokens=1, system_prompt_hash="h",
    )
    from dataclasses import replace

    rated = [
        RatedReply(replace(base, lorebook_entries=["world#a", "persona#1"]), {"u1": 1, "u2": 1}),
        RatedReply(replace(base, lorebook_entries=["world#a"]), {"u1": -1}),
        RatedReply(base, {"u1": 1}),
    ]
    stats = lore_attribution(rated)
    assert (stats["world#a"].replies, stats["world#a"].ups, stats["world#a"].downs) == (2, 2, 1)
    assert (stats["persona#1"].replies, stats["persona#1"].ups) == (1, 2)
