"""SqliteJournal on a real file: order, durability across reopening, forgetting (words leave the
files), bounded size, permissions, one replayer per file, and the write codec."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from bot.domain.feedback import Rating, ReplyRecord
from bot.domain.messages import StoredTurn
from bot.domain.ratings import MessageRating
from bot.domain.writes import (
    AppendTurns,
    ClearConversation,
    ForgetUser,
    LinkMessages,
    RateMessage,
    RateReply,
    RecordReply,
    Write,
    decode,
    encode,
)
from bot.errors import JournalError
from bot.journal import SqliteJournal


def record(user: str, text: str, participants: tuple[str, ...] = ()) -> ReplyRecord:
    return ReplyRecord(
        reply_id=f"r-{user}-{abs(hash(text)) % 10**6}",
        conversation_id="c",
        user_id=user,
        persona_id="p",
        persona_version="1",
        model="m",
        backend="scripted",
        adapter=None,
        generation={},
        prompt_messages=[{"role": "user", "content": text}],
        reply=f"you said {text}",
        latency_s=0.1,
        first_token_s=0.01,
        prompt_tokens=3,
        completion_tokens=3,
        system_prompt_hash="h",
        participants=sorted({user, *participants}),
    )


def turns(conversation: str, user: str, text: str, reply_id: str = "r1") -> AppendTurns:
    said = (StoredTurn("user", text, user_id=user, persona_id="p"), StoredTurn("assistant", "ok", user_id=user))
    return AppendTurns(conversation, said, 10, 3600, reply_id)


def file_bytes(path: Path) -> bytes:
    """Every byte of the journal's files (database, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


@pytest.fixture
async def journal(tmp_path: Path) -> SqliteJournal:
    j = await SqliteJournal.open(tmp_path / "journal" / "bot.sqlite3")
    yield j  # type: ignore[misc]
    await j.close()


def test_every_write_round_trips_through_its_json() -> None:
    writes: list[Write] = [
        RecordReply(record("alice", "hello")),
        turns("c1", "alice", "hi there"),
        RateReply(Rating("r1", "bob", -1, at=12.5, context={"source": "console"})),
        RateMessage(MessageRating("discord:msg:1", "bob", 1, removed=True, at=13.0, context={"a": "b"})),
        LinkMessages("r1", ("discord:msg:1", "discord:msg:2")),
        ForgetUser("alice"),
        ClearConversation("c1"),
    ]
    for write in writes:
        assert decode(write.kind, encode(write)) == write
    with pytest.raises(ValueError, match="unknown journaled write"):
        decode("mystery", "{}")


async def test_writes_come_back_in_order_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "journal" / "bot.sqlite3"
    first = await SqliteJournal.open(path)
    assert not first.pending
    await first.append([RecordReply(record("alice", "one")), turns("c1", "alice", "one")])
    await first.append([RateReply(Rating("r1", "bob", 1, at=1.0))])
    assert first.pending
    await first.close()  # a crash after append returned loses nothing: synchronous=FULL, WAL
    again = await SqliteJournal.open(path)
    try:
        assert again.pending, "a journal left by an earlier run is pending from the start"
        entries = await again.oldest(10)
        assert [w.kind for _, w in entries] == ["record", "turns", "rate"]
        assert [i for i, _ in entries] == sorted(i for i, _ in entries)
        await again.remove([i for i, _ in entries[:2]])
        assert [w.kind for _, w in await again.oldest(10)] == ["rate"]
        assert not await again.settle() and again.pending
        await again.remove([entries[2][0]])
        assert await again.settle() and not again.pending
    finally:
        await again.close()


async def test_forgetting_a_user_removes_their_words_from_the_files(journal: SqliteJournal) -> None:
    await journal.append([RecordReply(record("alice", "zanzibar-secret-alpha"))])
    await journal.append([turns("c1", "alice", "zanzibar-secret-beta")])
    await journal.append([RecordReply(record("bob", "quoting zanzibar-secret-gamma", participants=("alice",)))])
    await journal.append([RateMessage(MessageRating("discord:msg:9", "alice", 1))])
    await journal.append([RecordReply(record("bob", "bob-only-words"))])
    await journal.append([LinkMessages("r1", ("discord:msg:9",))])
    assert b"zanzibar-secret-alpha" in file_bytes(journal.path), "the check below can fail"
    assert await journal.forget_user("alice") == 4
    data = file_bytes(journal.path)
    assert b"zanzibar-secret" not in data
    assert b"bob-only-words" in data, "other users' writes stay"
    assert [w.kind for _, w in await journal.oldest(10)] == ["record", "link"]


async def test_forgetting_a_conversation_drops_only_its_memory_appends(journal: SqliteJournal) -> None:
    await journal.append([RecordReply(record("alice", "kept")), turns("c1", "alice", "dropped")])
    await journal.append([turns("c2", "alice", "other conversation")])
    assert await journal.forget_conversation("c1") == 1
    remaining = [w for _, w in await journal.oldest(10)]
    assert [w.kind for w in remaining] == ["record", "turns"]
    assert isinstance(remaining[1], AppendTurns) and remaining[1].conversation_id == "c2"


async def test_a_forget_request_is_not_dropped_by_forgetting_again(journal: SqliteJournal) -> None:
    await journal.append([ForgetUser("alice")])
    await journal.forget_user("alice")
    assert [w for _, w in await journal.oldest(10)] == [ForgetUser("alice")]


async def test_an_undecodable_write_is_set_aside_not_replayed(
    journal: SqliteJournal, caplog: pytest.LogCaptureFixture
) -> None:
    await journal.append([ClearConversation("c1")])
    db = sqlite3.connect(journal.path)
    db.execute("INSERT INTO writes (kind, body, created) VALUES ('from-a-newer-version', '{}', 0)")
    db.commit()
    db.close()
    await journal.append([ClearConversation("c2")])
    assert [w for _, w in await journal.oldest(10)] == [ClearConversation("c1"), ClearConversation("c2")]
    assert "can never be applied" in caplog.text
    assert await journal.count() == (2, 1)


async def test_a_full_journal_refuses_with_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = await SqliteJournal.open(tmp_path / "j.sqlite3", max_bytes=64 * 1024)
    try:
        big = record("alice", "x" * 5_000)
        with pytest.raises(JournalError, match="full"), caplog.at_level(logging.ERROR):
            for _ in range(10):
                await journal.append([RecordReply(big)])
        assert "the write journal" in caplog.text and "is full" in caplog.text
        stored = len(await journal.oldest(100))
        assert 0 < stored < 10, "writes before the cap are kept"
    finally:
        await journal.close()


async def test_files_are_private(journal: SqliteJournal) -> None:
    await journal.append([RecordReply(record("alice", "private"))])
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700
    files = list(journal.path.parent.glob(journal.path.name + "*"))
    assert {p.name for p in files} >= {"bot.sqlite3", "bot.sqlite3-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_one_replayer_per_journal_file(journal: SqliteJournal) -> None:
    other = await SqliteJournal.open(journal.path)  # another process, as far as flock is concerned
    try:
        assert journal.claim_replay()
        assert not other.claim_replay()
        journal.release_replay()
        assert other.claim_replay()
        # Writes of one process are seen as pending by the other once it settles.
        await journal.append([ClearConversation("c1")])
        assert not other.pending
        assert not await other.settle() and other.pending
    finally:
        await other.close()


async def test_concurrent_appends_share_commits_and_keep_their_order(journal: SqliteJournal) -> None:
    writes = [ClearConversation(f"c{i}") for i in range(200)]
    await asyncio.gather(*(journal.append([w]) for w in writes))
    assert [w for _, w in await journal.oldest(500)] == writes
    await journal.forget_conversation("c0")  # waits for queued commits, so nothing comes back after it
    assert len(await journal.oldest(500)) == 200, "clears are not memory appends"
