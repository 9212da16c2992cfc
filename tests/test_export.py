"""Training exports from a real Redis feedback log: exact row formats, filters, /forget-me."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.domain.feedback import RatedReply, Rating, ReplyRecord
from bot.feedback.export import ExportFormat, ExportOptions, export
from bot.feedback.redis_log import RedisFeedbackLog
from bot.redis_conn import RedisHandle

SYSTEM = {"role": "system", "content": "You are Captain Redbeard."}


def record(
    rid: str, user: str, question: str, reply: str, *, persona: str = "captain", at: float = 0.0
) -> ReplyRecord:
    return ReplyRecord(
        reply_id=rid,
        conversation_id=f"conv-{user}",
        user_id=user,
        persona_id=persona,
        persona_version="1.0",
        model="scripted",
        backend="scripted",
        adapter=None,
        generation={"temperature": 0.7},
        prompt_messages=[SYSTEM, {"role": "user", "content": question}],
        reply=reply,
        latency_s=0.5,
        first_token_s=0.1,
        prompt_tokens=10,
        completion_tokens=len(reply.split()),
        system_prompt_hash="abc",
        created_at=1_700_000_000.0 + at,
    )


@pytest.fixture
async def log(redis_handle: RedisHandle) -> RedisFeedbackLog:
    return RedisFeedbackLog(redis_handle)


async def seed(
    log: RedisFeedbackLog, rid: str, user: str, question: str, reply: str, votes: dict[str, int], **kw: Any
) -> None:
    await log.record(record(rid, user, question, reply, at=len(rid), **kw))
    for voter, value in votes.items():
        await log.rate(Rating(rid, voter, value))  # type: ignore[arg-type]


async def rows(log: RedisFeedbackLog, fmt: ExportFormat, **options: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    await export(log, fmt, out, ExportOptions(**options))
    text = out.getvalue()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_messages(messages: Any, roles: set[str] | None = None) -> None:
    """TRL's conversational format: a list of {"role", "content"} dicts with known roles."""
    assert isinstance(messages, list) and messages
    for m in messages:
        assert set(m) == {"role", "content"} and isinstance(m["content"], str)
        assert m["role"] in (roles or {"system", "user", "assistant"})


async def test_sft_rows_are_chat_messages_of_liked_replies(log: RedisFeedbackLog) -> None:
    await seed(log, "r1", "u1", "Where is the treasure?", "Arr, under the palm!", {"u1": 1})
    await seed(log, "r2", "u2", "Hello", "Go away.", {"u2": -1})
    await seed(log, "r3", "u3", "Tie?", "Maybe.", {"u3": 1, "u4": -1})
    (row,) = await rows(log, "sft")
    assert set(row) == {"messages"}
    assert_messages(row["messages"])
    assert row["messages"] == [
        SYSTEM,
        {"role": "user", "content": "Where is the treasure?"},
        {"role": "assistant", "content": "Arr, under the palm!"},
    ]


async def test_kto_rows_have_trl_unpaired_preference_fields(log: RedisFeedbackLog) -> None:
    await seed(log, "r1", "u1", "Where is the treasure?", "Arr, under the palm!", {"u1": 1, "u2": 1})
    await seed(log, "r2", "u2", "Hello", "Go away.", {"u2": -1})
    await seed(log, "r3", "u3", "Tie?", "Maybe.", {"u3": 1, "u4": -1})
    kto = await rows(log, "kto")
    assert [r["label"] for r in kto] == [True, False]  # the tie is left out
    for r in kto:
        assert set(r) == {"prompt", "completion", "label"} and isinstance(r["label"], bool)
        assert_messages(r["prompt"], {"system", "user", "assistant"})
        assert_messages(r["completion"], {"assistant"})
        assert r["prompt"][-1]["role"] == "user"
    assert kto[1]["completion"] == [{"role": "assistant", "content": "Go away."}]


async def test_dpo_pairs_replies_to_the_same_prompt(log: RedisFeedbackLog) -> None:
    await seed(log, "a1", "u1", "Hello", "Ahoy, matey!", {"u1": 1})
    await seed(log, "a2", "u2", "Hello", "What do you want.", {"u2": -1, "u3": -1})
    await seed(log, "b1", "u1", "Only liked", "Arr!", {"u1": 1})  # no rejected twin: no pair
    await seed(log, "c1", "u4", "Hello", "Tie", {"u4": 1, "u5": -1})  # a tie is neither side
    (pair,) = await rows(log, "dpo")
    assert set(pair) == {"prompt", "chosen", "rejected"}
    assert pair["prompt"] == [SYSTEM, {"role": "user", "content": "Hello"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Ahoy, matey!"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "What do you want."}]


async def test_dpo_caps_pairs_per_prompt_and_prefers_strong_signals(log: RedisFeedbackLog) -> None:
    await seed(log, "g1", "u1", "Q", "good", {"u1": 1})
    await seed(log, "g2", "u2", "Q", "great", {"u2": 1, "u3": 1})
    await seed(log, "b1", "u3", "Q", "bad", {"u3": -1})
    await seed(log, "b2", "u4", "Q", "awful", {"u4": -1, "u5": -1})
    pairs = await rows(log, "dpo", max_pairs_per_prompt=4)
    combos = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert combos == {("great", "awful"), ("great", "bad"), ("good", "awful"), ("good", "bad")}
    first = await rows(log, "dpo", max_pairs_per_prompt=1)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in first] == [("great", "awful")]


async def test_min_ratings_persona_and_system_prompt_options(log: RedisFeedbackLog) -> None:
    await seed(log, "r1", "u1", "One vote", "ok", {"u1": 1})
    await seed(log, "r2", "u2", "Two votes", "fine", {"u2": 1, "u3": 1})
    await seed(log, "r3", "u2", "Other persona", "hi", {"u2": 1}, persona="assistant")
    assert [r["messages"][1]["content"] for r in await rows(log, "sft", min_ratings=2)] == ["Two votes"]
    assert [r["messages"][1]["content"] for r in await rows(log, "sft", persona_id="assistant")] == [
        "Other persona"
    ]
    no_system = await rows(log, "kto", persona_id="captain", include_system=False)
    assert all(r["prompt"][0]["role"] == "user" for r in no_system) and len(no_system) == 2


async def test_jsonl_rows_carry_what_produced_the_reply(log: RedisFeedbackLog) -> None:
    await seed(log, "r1", "u1", "Where?", "There.", {"u1": 1, "u2": -1, "u3": 1})
    (row,) = await rows(log, "jsonl")
    assert row["reply_id"] == "r1" and row["persona_id"] == "captain" and row["persona_version"] == "1.0"
    assert row["variant"] == "default" and row["system_prompt_hash"] == "abc"
    assert (row["rating"], row["ups"], row["downs"]) == (1, 2, 1)
    assert row["ratings"] == {"u1": 1, "u2": -1, "u3": 1} and row["reply"] == "There."


async def test_forget_me_removes_a_users_rows_and_votes(log: RedisFeedbackLog) -> None:
    await seed(log, "r1", "alice", "Alice asks", "Answer to Alice", {"alice": 1})
    await seed(log, "r2", "bob", "Bob asks", "Answer to Bob", {"alice": 1, "bob": -1})
    await seed(log, "r3", "bob", "Bob again", "Second answer", {"bob": 1})
    before = await rows(log, "jsonl")
    assert {r["reply_id"] for r in before} == {"r1", "r2", "r3"}
    await log.forget_user("alice")
    for fmt in ("jsonl", "sft", "kto", "dpo"):
        text = json.dumps(await rows(log, fmt))  # type: ignore[arg-type]
        assert "alice" not in text.lower(), fmt
    kto = await rows(log, "kto")
    # r1 is gone; r2 lost Alice's 👍 so Bob's 👎 decides: a negative example now.
    assert [(r["prompt"][-1]["content"], r["label"]) for r in kto] == [
        ("Bob asks", False),
        ("Bob again", True),
    ]


class PagedLog:
    """A feedback log that checks each row was written before it yields the next one."""

    def __init__(self, rated: list[RatedReply], out: io.StringIO) -> None:
        self.rated = rated
        self.out = out

    async def iter_rated(self, persona_id: str | None = None) -> AsyncIterator[RatedReply]:
        for i, item in enumerate(self.rated):
            assert self.out.getvalue().count("\n") == i, "export buffered rows instead of streaming"
            yield item


@pytest.mark.parametrize("fmt", ["jsonl", "sft", "kto"])
async def test_export_streams_row_by_row(fmt: ExportFormat) -> None:
    out = io.StringIO()
    rated = [RatedReply(record(f"r{i}", "u", f"q{i}", f"a{i}"), {"u": 1}) for i in range(5)]
    stats = await export(PagedLog(rated, out), fmt, out, ExportOptions())  # type: ignore[arg-type]
    assert stats.written == 5 and stats.rated == 5


async def test_rows_load_with_trl_when_installed(log: RedisFeedbackLog) -> None:
    trl = pytest.importorskip("trl")
    await seed(log, "a1", "u1", "Hello", "Ahoy!", {"u1": 1})
    await seed(log, "a2", "u2", "Hello", "Meh.", {"u2": -1})
    for fmt in ("sft", "kto", "dpo"):
        for row in await rows(log, fmt):  # type: ignore[arg-type]
            assert trl.is_conversational(row), fmt
