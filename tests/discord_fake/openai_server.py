"""A scripted OpenAI-compatible chat server on 127.0.0.1 (`/v1/chat/completions`, streaming).

Each reply is "Reply to: <the last user message> [done]", streamed in up to `pieces` chunks over
`reply_s` seconds, so a test or benchmark can tell which message a reply answers and whether it
is complete. It counts requests, and the most it served at once (limits).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

DONE = "[done]"


def reply_to(text: str) -> str:
    return f"Reply to: {text} {DONE}"


class ScriptedOpenAI:
    def __init__(self, *, pieces: int = 4, reply_s: float = 0.0) -> None:
        self.pieces = pieces
        self.reply_s = reply_s
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _chunks(self, text: str) -> list[str]:
        words = text.split(" ")
        size = max(1, -(-len(words) // self.pieces))
        starts = range(0, len(words), size)
        return [" ".join(words[i : i + size]) + (" " if i + size < len(words) else "") for i in starts]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            pieces = self._chunks(reply_to(str(body["messages"][-1]["content"])))
            for piece in pieces:
                if self.reply_s:
                    await asyncio.sleep(self.reply_s / len(pieces))
                await response.write(_event(body, {"role": "assistant", "content": piece}))
            await response.write(b"data: [DONE]\n\n")
            return response
        finally:
            self.in_flight -= 1


def _event(body: dict[str, Any], delta: dict[str, str]) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return f"data: {json.dumps(chunk)}\n\n".encode()
