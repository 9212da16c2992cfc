"""The console chat: stream replies token by token; works with a terminal or piped input.

Commands: /rate up|down (or /good, /bad), /reset, /persona ID, /personas, /help, /quit.
With piped input each line is one message and is echoed, so a transcript reads like a chat.

Everything printed goes through bot.domain.text: escape sequences and control characters in input
(echoed) and model output never reach the terminal, and undecodable input bytes become U+FFFD.
A persona edited while chatting applies to the next message (hot reload); a removed one hands over
to the default persona.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

from bot.domain.messages import ChatRequest, Speaker
from bot.domain.persona import Persona
from bot.domain.text import TerminalFilter, terminal_safe, valid_text
from bot.engine import ChatEngine, ReplyFinished, TextDelta
from bot.errors import BotError, PersonaNotFound

log = logging.getLogger(__name__)

HELP = """commands:
  /rate up|down   rate the last reply (also /good, /bad, /up, /down)
  /reset          forget this conversation
  /persona ID     switch persona
  /personas       list personas
  /help           this text
  /quit           leave (Ctrl-D works too)"""

#: Remembered turns looked at on start to tell whether this persona has talked here before.
HISTORY_WINDOW = 50

RATINGS = {"up": 1, "good": 1, "+1": 1, "+": 1, "down": -1, "bad": -1, "-1": -1, "-": -1}


@dataclass
class ConsoleSession:
    engine: ChatEngine
    persona_id: str
    user_name: str
    conversation: str
    out: TextIO
    interactive: bool
    last_reply_id: str | None = None
    running: bool = field(default=True)

    @property
    def conversation_id(self) -> str:
        return f"console:{self.conversation}"

    @property
    def speaker(self) -> Speaker:
        return Speaker(f"console:{self.user_name}", self.user_name)

    def say(self, text: str) -> None:
        self.out.write(terminal_safe(text) + "\n")
        self.out.flush()

    def persona(self) -> Persona:
        """The session's persona; if it was removed or disabled (hot reload), the default one."""
        try:
            return self.engine.personas.get(self.persona_id)
        except PersonaNotFound as exc:
            default = self.engine.default_persona
            if self.persona_id == default:
                raise
            persona = self.engine.personas.get(default)
            self.say(f"({exc}; now chatting with {persona.name})")
            self.persona_id, self.last_reply_id = persona.id, None
            return persona

    async def start(self) -> None:
        persona = self.persona()
        self.say(f"Chatting with {persona.name} [{persona.id} v{persona.version}]. /help for commands.")
        if await self.spoke_here(persona):
            self.say("(continuing the earlier conversation; /reset to start over)")
        else:
            await self.greet(persona)

    async def spoke_here(self, persona: Persona) -> bool:
        """Personas keep their own part of a conversation: only this persona's turns make it "earlier"."""
        history = await self.engine.memory.load(self.conversation_id, HISTORY_WINDOW)
        return any(turn.persona_id == persona.id for turn in history)

    async def greet(self, persona: Persona) -> None:
        greeting = await self.engine.greeting(persona, self.user_name, "console", conversation_id=self.conversation_id)
        if greeting:
            self.say(f"{persona.name}> {greeting}")

    async def handle(self, line: str) -> None:
        text = valid_text(line).strip()
        if not text:
            return
        if not self.interactive:
            self.say(f"{self.user_name}> {text}")
        try:
            if text.startswith("/"):
                await self.command(text)
            else:
                await self.chat(text)
        except BotError as exc:
            log.warning("console: %s", exc)
            self.say(f"! {exc}")

    async def chat(self, text: str) -> None:
        persona = self.persona()
        self.out.write(terminal_safe(f"{persona.name}> "))
        self.out.flush()
        shown = TerminalFilter()
        forgetful = False
        request = ChatRequest(self.conversation_id, self.speaker, text, persona_id=self.persona_id,
                              channel_name="console")
        try:
            async with contextlib.aclosing(self.engine.stream(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        self.out.write(shown.feed(event.text))
                        self.out.flush()
                    elif isinstance(event, ReplyFinished):
                        self.last_reply_id = event.reply_id
                        forgetful = event.without_memory
        finally:
            self.out.write(shown.flush() + "\n")
            self.out.flush()
        if forgetful:
            self.say("(my memory is unavailable right now: I answered without our earlier conversation)")

    async def command(self, text: str) -> None:
        name, _, arg = text[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("quit", "exit", "q"):
            self.running = False
        elif name == "help":
            self.say(HELP)
        elif name in ("rate", "good", "bad", "up", "down"):
            await self.rate(arg if name == "rate" else name)
        elif name == "reset":
            await self.engine.reset(self.conversation_id)
            self.last_reply_id = None
            self.say("(conversation forgotten)")
        elif name == "personas":
            self.persona()  # a removed persona hands over first
            for p in self.engine.personas.all():
                mark = "*" if p.id == self.persona_id else " "
                self.say(f" {mark} {p.id:<16} {p.name} — {p.description}".rstrip(" —"))
        elif name == "persona":
            await self.switch(arg)
        else:
            self.say(f"unknown command /{name}; /help lists them")

    async def rate(self, word: str) -> None:
        value = RATINGS.get(word.lower())
        if value is None:
            self.say("usage: /rate up|down")
        elif self.last_reply_id is None:
            self.say("nothing to rate yet")
        else:
            outcome = await self.engine.rate(self.last_reply_id, self.speaker.id, value, source="console")
            kept = " (storage is down: kept, and stored when it is back)" if outcome == "queued" else ""
            self.say(f"(rated {'👍' if value > 0 else '👎'} — thanks){kept}")

    async def switch(self, persona_id: str) -> None:
        if not persona_id:
            self.say("usage: /persona ID (see /personas)")
            return
        try:
            persona = self.engine.personas.get(persona_id)
        except PersonaNotFound as exc:
            self.say(f"! {exc}")
            return
        self.persona_id = persona.id
        self.last_reply_id = None
        self.say(f"(now chatting with {persona.name})")
        if not await self.spoke_here(persona):
            await self.greet(persona)


async def run_console(
    engine: ChatEngine, persona_id: str, *, user_name: str, conversation: str, stdin: TextIO, out: TextIO
) -> None:
    for stream in (stdin, out):  # undecodable input and unencodable output never stop the chat
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape" if stream is stdin else "replace")
    interactive = stdin.isatty()
    session = ConsoleSession(engine, persona_id, user_name, conversation, out, interactive)
    await session.start()
    lines = _lines(stdin)
    while session.running:
        if interactive:
            out.write(terminal_safe(f"{user_name}> "))
            out.flush()
        line = await anext(lines, "")
        if not line:  # EOF: piped input is done, or Ctrl-D
            if interactive:
                out.write("\n")
            break
        await session.handle(line)


def _lines(stdin: TextIO) -> AsyncIterator[str]:
    """stdin's lines, read by a daemon thread: a readline blocked on a terminal must not hold up
    Ctrl-C (asyncio.to_thread's executor would be joined at exit, waiting for Enter)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        line = "x"
        while line:
            try:
                line = stdin.readline()
            except Exception as exc:  # a closed or broken stdin ends the chat like EOF
                log.warning("console: cannot read input: %s", exc)
                line = ""
            try:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            except RuntimeError:  # the loop is gone: the chat has ended
                return

    async def read() -> AsyncIterator[str]:
        while line := await queue.get():
            yield line

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return read()
