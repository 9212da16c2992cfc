"""A TCP relay between a Redis client and a real redis-server that records what each client
connection sent, so a test can wait for a command (e.g. redis-py's retry) to have left."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class RedisRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent: list[bytearray] = []  # per client connection, what it sent
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def connections_sending(self, needle: bytes) -> int:
        return sum(needle in sent for sent in self.sent)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (10 s at most) until `predicate()` holds; checked whenever a client connects or sends."""
        async with asyncio.timeout(10.0), self.changed:
            await self.changed.wait_for(predicate)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.sent.append(record)
        async with self.changed:
            self.changed.notify_all()
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pipes = [
            asyncio.create_task(self._pipe(reader, upstream_writer, record)),
            asyncio.create_task(self._pipe(upstream_reader, writer, None)),
        ]
        self._pipes.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
            self._pipes.discard(task)
        for w in (writer, upstream_writer):
            with contextlib.suppress(OSError):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if record is not None:
                    record.extend(data)
                    async with self.changed:
                        self.changed.notify_all()
        with contextlib.suppress(OSError):
            writer.write_eof()
