"""Text from outside (users, terminals, models) made safe to store and to show.

    valid_text("caf\udce9")             # "caf\ufffd": lone surrogates (undecodable input) replaced
    TerminalFilter().feed("\x1b[2Jhi")  # "hi": escape sequences and control characters dropped

Python strings may hold lone surrogates (bytes a terminal could not decode, under the
surrogateescape error handler); they cannot be encoded as UTF-8, so one would fail the first write
to Redis or to stdout. Model output and user text may hold terminal escape sequences (clear the
screen, retitle the window, fake a prompt); a console must not pass them on.
"""

from __future__ import annotations

import dataclasses
import re

from bot.domain.messages import ChatRequest, Speaker

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")

# ESC sequences: CSI (ESC [ ... final), OSC/DCS/PM/APC/SOS (ESC ] ... BEL or ESC \), two-char ESC X;
# then any other C0/C1 control but tab and newline.
_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x90\x9d\x98\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -~]"
)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# An escape sequence that may still be going on at the end of a chunk.
_UNFINISHED = re.compile(r"(\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b]*)?|\x9b[0-?]*[ -/]*)\Z")
_MAX_PENDING = 256


def valid_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (encodable as UTF-8 everywhere)."""
    return _SURROGATE.sub(REPLACEMENT, text) if _SURROGATE.search(text) else text


def valid_request(request: ChatRequest) -> ChatRequest:
    """The request with valid_text in every text a user or transport supplied."""
    fields = (request.text, request.speaker.name, request.speaker.id, request.channel_name, request.server_name)
    if not any(_SURROGATE.search(f) for f in fields) and not any(
        _SURROGATE.search(f"{k}{v}") for k, v in request.context.items()
    ):
        return request
    return dataclasses.replace(
        request,
        text=valid_text(request.text),
        speaker=Speaker(valid_text(request.speaker.id), valid_text(request.speaker.name)),
        channel_name=valid_text(request.channel_name),
        server_name=valid_text(request.server_name),
        context={valid_text(k): valid_text(v) for k, v in request.context.items()},
    )


def terminal_safe(text: str) -> str:
    """`text` without escape sequences or control characters (tab and newline kept)."""
    return _CONTROL.sub("", _SEQUENCE.sub("", valid_text(text))).replace("\r", "")


class TerminalFilter:
    """terminal_safe for a stream of chunks: a sequence split across chunks is still removed."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        unfinished = _UNFINISHED.search(text)
        if unfinished is not None and len(unfinished.group()) < _MAX_PENDING and unfinished.group():
            self._pending, text = unfinished.group(), text[: unfinished.start()]
        else:
            self._pending = ""
        return terminal_safe(text)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return terminal_safe(text)
