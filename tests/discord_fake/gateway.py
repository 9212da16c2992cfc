"""The fake gateway: websocket sessions speaking Discord's gateway protocol (v10, JSON).

Implements HELLO, HEARTBEAT/ACK, IDENTIFY -> READY + GUILD_CREATE, RESUME -> RESUMED (with
optional replayed events, as Discord may redeliver after a resume), RECONNECT, and dispatches.
Each session is one shard (IDENTIFY's `shard: [id, count]`): it gets the servers whose events
Discord routes to that shard, `(guild_id >> 22) % count`, and direct messages go to shard 0.
Frames are plain text; discord.py accepts them even though it asks for a compressed stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .payloads import Json

log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, RESUME, RECONNECT, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 7, 10, 11
#: Close codes: a bad token; a privileged intent the application may not use.
AUTHENTICATION_FAILED = 4004
DISALLOWED_INTENTS = 4014
MESSAGE_CONTENT_INTENT = 1 << 15


class GatewaySession:
    """One websocket connection. The server keeps the latest identified or resumed one."""

    def __init__(self, ws: web.WebSocketResponse, server: Any) -> None:
        self.ws = ws
        self.server = server
        self.session_id: str | None = None
        self.shard_id = 0
        self.shard_count = 1
        self.ready = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, payload: Json) -> None:
        async with self._send_lock:
            await self.ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: Json) -> int:
        seq = self.server.next_seq()
        await self.send({"op": DISPATCH, "t": event, "s": seq, "d": data})
        return seq

    async def run(self) -> None:
        await self.send({"op": HELLO, "d": {"heartbeat_interval": 41250}})
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    log.warning("fake gateway: unexpected binary frame")
                continue
            payload = json.loads(msg.data)
            self.server.gateway_log.append(payload)
            await self._handle(payload)
            self.server.notify()

    async def _handle(self, payload: Json) -> None:
        op, data = payload.get("op"), payload.get("d")
        handlers: dict[int, Callable[[Any], Any]] = {
            HEARTBEAT: self._heartbeat,
            IDENTIFY: self._identify,
            RESUME: self._resume,
        }
        handler = handlers.get(op)  # type: ignore[arg-type]
        if handler is not None:
            await handler(data)

    async def _heartbeat(self, _: Any) -> None:
        await self.send({"op": HEARTBEAT_ACK, "d": None})

    async def _identify(self, data: Json) -> None:
        if data.get("token") != self.server.token:
            await self.ws.close(code=AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        if data.get("intents", 0) & MESSAGE_CONTENT_INTENT and not self.server.message_content_allowed:
            await self.ws.close(code=DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return
        self.server.identifies.append(data)
        self.session_id = f"session-{len(self.server.identifies)}"
        self.shard_id, self.shard_count = data.get("shard") or [0, 1]
        self.server.shard_count = self.shard_count
        self.server.session_shards[self.session_id] = (self.shard_id, self.shard_count)
        shard = [self.shard_id, self.shard_count]
        await self.dispatch("READY", self.server.ready_payload(self.session_id, shard))
        for guild in self.server.guild_payloads(self.shard_id):
            await self.dispatch("GUILD_CREATE", guild)
        self.server.attach(self)
        self.ready.set()

    async def _resume(self, data: Json) -> None:
        self.server.resumes.append(data)
        self.session_id = data.get("session_id")
        self.shard_id, self.shard_count = self.server.session_shards.get(self.session_id or "", (0, 1))
        for event, event_data in self.server.take_replay():
            await self.dispatch(event, event_data)
        await self.dispatch("RESUMED", {})
        self.server.attach(self)
        self.ready.set()

    async def reconnect(self) -> None:
        """Ask the client to reconnect (op 7); it resumes on a new connection."""
        await self.send({"op": RECONNECT, "d": None})
