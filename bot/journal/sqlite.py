"""The write journal on disk: SQLite (stdlib) in WAL mode with synchronous=FULL, so a write is on
disk (fsync'd) when `append` returns, and survives a crash of the bot or of the machine.

One file per Redis key prefix under `data_dir/journal/` (0700; the file 0600). Writes are kept in
order (an autoincrement id); each lists the users whose words or ratings it carries, so /forget-me
deletes them, with `secure_delete` on (deleted rows are overwritten, not just unlinked) and a WAL
checkpoint that truncates the log, so the words leave the files. Several bot processes may share
the file (SQLite locks it); one at a time replays it (an flock on `<file>.replay`).

SQLite calls run on one worker thread of the journal's own: an fsync never blocks the event loop,
and the calls keep the order they were made in. Appends are group-committed: those made while a
commit is on its way to the disk share the next transaction (one fsync), so an outage with many
users does not queue them behind one fsync each.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bot.domain.writes import AppendTurns, Write, decode, encode
from bot.errors import JournalError
from bot.private_files import FILE_MODE, private_dir, private_file

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[str, str, str | None, frozenset[str]]  # kind, JSON body, conversation, users

SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    conversation TEXT,          -- set for memory appends, so /forget of a conversation drops them
    created REAL NOT NULL,
    dead TEXT                   -- why it can never be applied (kept for inspection); NULL: pending
);
CREATE TABLE IF NOT EXISTS write_users (
    write INTEGER NOT NULL REFERENCES writes(id) ON DELETE CASCADE,
    user TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS write_users_user ON write_users(user);
CREATE INDEX IF NOT EXISTS write_users_write ON write_users(write);
CREATE INDEX IF NOT EXISTS writes_conversation ON writes(conversation) WHERE conversation IS NOT NULL;
"""


class SqliteJournal:
    """Implements the `Journal` port (bot.ports)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: sqlite3.Connection | None = None
        self._replay_fd: int | None = None
        self._pending = False
        self._appends = 0
        self._full = False
        self._queue: list[tuple[list[Row], asyncio.Future[None]]] = []  # appends waiting for the next commit
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int = 256 * 2**20) -> SqliteJournal:
        journal = cls(path, max_bytes=max_bytes)
        await journal._run(journal._open)
        journal._pending = await journal._run(journal._has_pending)
        return journal

    # -- the port ----------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether writes wait here that this process knows of (its own, or seen by `settle`)."""
        return self._pending

    async def append(self, writes: Sequence[Write]) -> None:
        """Store writes durably (all or none), in order; raises JournalError (disk error, journal full)."""
        if not writes:
            return
        self._pending = True  # before the first await: later writers of this process queue behind
        self._appends += 1
        committed = asyncio.get_running_loop().create_future()
        self._queue.append((self._rows(writes), committed))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="journal-commit")
        await committed

    async def prepend(self, writes: Sequence[Write]) -> None:
        """Store writes durably ahead of every pending one (writes older than all of them)."""
        if not writes:
            return
        self._pending = True
        self._appends += 1
        rows = self._rows(writes)
        [refused] = await self._run(lambda: self._insert([rows], first=True))
        if refused is not None:
            raise JournalError(self.path, refused)

    async def oldest(self, limit: int) -> list[tuple[int, Write]]:
        """The oldest pending writes, in order. Ones that cannot be decoded are set aside (logged)."""
        rows = await self._run(lambda: self._select(limit))
        out: list[tuple[int, Write]] = []
        for entry_id, kind, body in rows:
            try:
                out.append((entry_id, decode(kind, body)))
            except (ValueError, TypeError, KeyError) as exc:
                await self.bury(entry_id, f"cannot decode: {exc}")
        return out

    async def remove(self, ids: Sequence[int]) -> None:
        if ids:
            await self._run(lambda: self._delete_ids(ids))

    async def bury(self, entry_id: int, reason: str) -> None:
        """Keep a write that can never be applied out of the way (and out of the replay order)."""
        log.error("journaled write %s can never be applied and is set aside: %s", entry_id, reason)
        await self._run(lambda: self._write("UPDATE writes SET dead = ? WHERE id = ?", (reason, entry_id)))

    async def settle(self) -> bool:
        """Whether no write is pending (in any process); updates `pending` accordingly."""
        mark = self._appends
        has = await self._run(self._has_pending)
        if has:
            self._pending = True
        elif mark == self._appends:  # no append of ours started while we looked
            self._pending = False
        return not has

    async def count(self) -> tuple[int, int]:
        """(pending writes, writes set aside)."""
        return await self._run(self._count)

    async def forget_user(self, user_id: str) -> int:
        """Delete every write carrying this user's words or ratings; returns how many."""
        await self._committed()
        return await self._run(lambda: self._forget(
            "DELETE FROM writes WHERE id IN (SELECT write FROM write_users WHERE user = ?)", (user_id,)
        ))  # fmt: skip

    async def forget_conversation(self, conversation_id: str) -> int:
        """Delete the memory appends of one conversation (/forget); returns how many."""
        await self._committed()
        return await self._run(lambda: self._forget("DELETE FROM writes WHERE conversation = ?", (conversation_id,)))

    def claim_replay(self) -> bool:
        """Become the one process replaying this journal (non-blocking); False if another one is."""
        if self._replay_fd is not None:
            return True
        fd = os.open(f"{self.path}.replay", os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._replay_fd = fd
        return True

    def release_replay(self) -> None:
        if self._replay_fd is not None:
            os.close(self._replay_fd)
            self._replay_fd = None

    async def close(self) -> None:
        await self._committed()
        self.release_replay()
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _flush(self) -> None:
        """Commit the queued appends, as many as are queued at a time, in one transaction each round."""
        while self._queue:
            batch, self._queue = self._queue, []
            groups = [rows for rows, _ in batch]
            refused: list[str | JournalError | None]
            try:
                refused = list(await self._run(functools.partial(self._insert, groups)))
            except JournalError as exc:
                refused = [exc] * len(batch)
            for (_, committed), why in zip(batch, refused, strict=True):
                if committed.done():  # its writer was cancelled meanwhile; the rows are committed anyway
                    continue
                if why is None:
                    committed.set_result(None)
                else:
                    committed.set_exception(why if isinstance(why, JournalError) else JournalError(self.path, why))

    async def _committed(self) -> None:
        """Wait until every append made so far is on disk (or refused)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    # -- on the journal's thread -------------------------------------------------------------------

    @staticmethod
    def _rows(writes: Sequence[Write]) -> list[tuple[str, str, str | None, frozenset[str]]]:
        return [(w.kind, encode(w), w.conversation_id if isinstance(w, AppendTurns) else None, w.users) for w in writes]

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise JournalError(self.path, str(exc)) from exc

    def _open(self) -> None:
        private_dir(self.path.parent)
        private_file(self.path)  # SQLite gives its -wal and -shm files the database file's mode
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA auto_vacuum = FULL")  # before the first table: freed pages leave the file
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
        db.execute("PRAGMA secure_delete = ON")  # deleted rows are overwritten with zeros
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(SCHEMA)
        self._db = db

    def _close(self) -> None:
        assert self._db is not None
        self._db.close()
        self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the journal is closed")
        return self._db

    def _insert(self, groups: list[list[Row]], *, first: bool = False) -> list[str | None]:
        """Insert each group of rows whole, in one transaction; per group None, or why it was refused
        (the journal would pass its size cap)."""
        db = self._conn
        size = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        now, outcome = time.time(), list[str | None]()
        with db:
            db.execute("BEGIN IMMEDIATE")
            # Ahead of everything: ids below the smallest one (they may go negative; order is all that counts).
            low = db.execute("SELECT min(id) FROM writes").fetchone()[0] if first else None
            for rows in groups:
                grow = sum(len(body) for _, body, _, _ in rows)
                if size + grow > self.max_bytes:
                    outcome.append(self._refuse(size))
                    continue
                size += grow
                for n, (kind, body, conversation, users) in enumerate(rows):
                    entry_id = None if low is None else low - len(rows) + n
                    cursor = db.execute(
                        "INSERT INTO writes (id, kind, body, conversation, created) VALUES (?, ?, ?, ?, ?)",
                        (entry_id, kind, body, conversation, now),
                    )
                    db.executemany(
                        "INSERT INTO write_users (write, user) VALUES (?, ?)", [(cursor.lastrowid, u) for u in users]
                    )
                self._full = False
                outcome.append(None)
        return outcome

    def _refuse(self, size: int) -> str:
        if not self._full:
            log.error(
                "the write journal %s is full (%.1f MiB, limit %.1f MiB): writes are refused until Redis is back "
                "and the journal drains (raise BOT_JOURNAL__MAX_MB to keep more)",
                self.path, size / 2**20, self.max_bytes / 2**20,
            )  # fmt: skip
            self._full = True
        return f"full ({self.max_bytes / 2**20:.1f} MiB)"

    def _select(self, limit: int) -> list[tuple[int, str, str]]:
        return self._conn.execute(
            "SELECT id, kind, body FROM writes WHERE dead IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def _write(self, sql: str, params: Sequence[object]) -> int:
        db = self._conn
        with db:
            db.execute("BEGIN IMMEDIATE")
            return db.execute(sql, params).rowcount

    def _delete_ids(self, ids: Sequence[int]) -> None:
        db = self._conn
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM writes WHERE id = ?", [(i,) for i in ids])
        if not self._has_pending():
            self._scrub()

    def _forget(self, sql: str, params: Sequence[object]) -> int:
        removed = self._write(sql, params)
        self._scrub()
        return removed

    def _scrub(self) -> None:
        """Copy the WAL into the database and truncate it: old frames hold deleted rows' words."""
        busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("journal %s: another process is reading it; its log is truncated at the next chance", self.path)

    def _has_pending(self) -> bool:
        return self._conn.execute("SELECT EXISTS (SELECT 1 FROM writes WHERE dead IS NULL)").fetchone()[0] == 1

    def _count(self) -> tuple[int, int]:
        pending, dead = self._conn.execute(
            "SELECT count(*) - count(dead), count(dead) FROM writes"
        ).fetchone()
        return int(pending), int(dead)
