"""Split a reply into messages that fit Discord's 2,000-character limit.

Pure functions. The cut is the best boundary that fits, in this order of preference:

1. a paragraph break (a blank line, or the edge of a fenced code block) outside code,
2. a line break outside code,
3. a line break inside a fenced code block,
4. the end of a sentence outside code,
5. any whitespace,
6. a hard cut.

Boundaries of kinds 1-4 are only taken when they keep at least a third of the limit in the
message, so a reply does not break into many tiny messages. A cut inside a fenced code block
closes the fence at the end of the message and reopens it, with the same language tag, at the
start of the next one, so every message renders as valid Markdown on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DISCORD_LIMIT = 2000

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE = re.compile(r"[.!?…][)\"'”’]*(\s+)")
_SPACE = re.compile(r"\s+")
#: Openers longer than this only protect their marker from cuts.
_MAX_REOPEN = 40
#: An info string Discord shows as a language tag (anything else it renders as a code line).
_LANG_TAG = re.compile(r"[\w+\-.#]{1,32}")


@dataclass(frozen=True, slots=True)
class Fence:
    """A fenced code block: it opens at `start` (a line start) and ends at `end`, the end of the
    closing marker (`close` is where that marker's line starts). `guard` is where the opener's
    protected part ends: no cut may fall inside it or inside the closing marker."""

    marker: str
    info: str
    start: int
    guard: int
    open_end: int
    close: int
    end: int

    def reopen(self, limit: int) -> str:
        """The opener line that continues this block in the next message."""
        tag = self.info if _LANG_TAG.fullmatch(self.info) and len(self.info) <= limit // 4 else ""
        return f"{self.marker}{tag}\n"

    def contains(self, pos: int) -> bool:
        """True when a message ending at `pos` would leave this block open."""
        return self.start < pos < self.end

    def in_marker(self, pos: int) -> bool:
        """True when a cut at `pos` would break the opening or closing marker."""
        return self.start < pos < self.guard or self.close < pos < self.end


@dataclass(frozen=True, slots=True)
class _Cut:
    head_end: int  # the message is text[:head_end] (right-stripped)
    rest_start: int  # the next message continues at text[rest_start:]
    fence: Fence | None  # the code block left open at the cut, if any


def find_fences(text: str) -> list[Fence]:
    """Every fenced code block (``` or ~~~); an unclosed one runs to the end of the text.

    As in Discord, a line that starts with the block's marker closes it even when text follows.
    """
    fences: list[Fence] = []
    opened: tuple[str, str, int, int, int] | None = None
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        match = _FENCE_LINE.match(body)
        if match:
            marker, rest = match.group(1), match.group(2)
            if opened is None:
                if not (marker[0] == "`" and "`" in rest):  # a backtick info string may not hold backticks
                    line_end = pos + len(body)
                    guard = line_end if len(body) <= _MAX_REOPEN else pos + match.end(1)
                    opened = (marker, rest.strip(), pos, guard, line_end)
            elif marker[0] == opened[0][0] and len(marker) >= len(opened[0]):
                fences.append(Fence(*opened, close=pos, end=pos + match.end(1)))
                opened = None
        pos += len(line)
    if opened is not None:
        fences.append(Fence(*opened, close=len(text), end=len(text)))
    return fences


def _fence_at(fences: list[Fence], pos: int) -> Fence | None:
    return next((f for f in fences if f.contains(pos)), None)


def _head(text: str, cut: _Cut) -> str:
    head = text[: cut.head_end].rstrip()
    if cut.fence is not None:
        head = f"{head}\n{cut.fence.marker}"
    return head


def _candidates(text: str, fences: list[Fence], limit: int, min_end: int) -> list[list[_Cut]]:
    """Possible cuts inside text[:limit + 1], grouped by preference (best group first)."""
    window = text[: limit + 1]
    groups: list[list[_Cut]] = [[] for _ in range(5)]

    def add(group: int, head_end: int, rest_start: int) -> None:
        if head_end <= min_end or any(f.in_marker(head_end) for f in fences):
            return
        fence = _fence_at(fences, head_end)
        if fence is not None and head_end in (fence.open_end, fence.close - 1):
            return  # would leave an empty code block on one side of the cut
        groups[group].append(_Cut(head_end, rest_start, fence))

    for m in _PARAGRAPH.finditer(window):
        if _fence_at(fences, m.start()) is None:
            add(0, m.start(), m.end())
    for fence in fences:
        if 0 < fence.start <= len(window) and text[fence.start - 1] == "\n":
            add(0, fence.start - 1, fence.start)  # just before the block
        if fence.end < len(window):
            add(0, fence.end, fence.end + 1 if text[fence.end] == "\n" else fence.end)  # just after it
    for i in (i for i, ch in enumerate(window) if ch == "\n"):
        add(1 if _fence_at(fences, i) is None else 2, i, i + 1)
    for m in _SENTENCE.finditer(window):
        if _fence_at(fences, m.start(1)) is None:
            add(3, m.start(1), m.end(1))
    for m in _SPACE.finditer(window):
        run = m.group()
        # A run that spans lines keeps the next line's indentation (code, nested lists).
        add(4, m.start(), m.start() + run.rfind("\n") + 1 if "\n" in run else m.end())
    return groups


def _choose_cut(text: str, limit: int, min_end: int) -> _Cut:
    fences = find_fences(text)
    floor = limit // 3
    for index, group in enumerate(_candidates(text, fences, limit, min_end)):
        minimum = floor if index < 4 else 1
        for cut in sorted(group, key=lambda c: c.head_end, reverse=True):
            head = _head(text, cut)
            if len(head) <= limit and len(head.strip()) >= minimum:
                return cut
    return _hard_cut(text, fences, limit, min_end)


def _hard_cut(text: str, fences: list[Fence], limit: int, min_end: int) -> _Cut:
    for pos in range(limit, min_end, -1):
        if any(f.in_marker(pos) for f in fences):
            continue
        cut = _Cut(pos, pos, _fence_at(fences, pos))
        if len(_head(text, cut)) <= limit:
            return cut
    return _Cut(limit, limit, None)  # only with absurd markers: give up on Markdown, keep the text


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split `text` into non-empty pieces of at most `limit` characters (see the module doc)."""
    if limit < 20:
        raise ValueError("limit must be at least 20 characters")
    chunks: list[str] = []
    work = text.strip("\n")
    reopen = ""
    while len(work) > limit:
        cut = _choose_cut(work, limit, min_end=len(reopen))
        head = _head(work, cut)
        if head.strip():
            chunks.append(head)
        reopen = cut.fence.reopen(limit) if cut.fence is not None else ""
        rest = work[cut.rest_start :]
        work = reopen + (rest if cut.fence is not None else rest.lstrip("\n"))
    if work.strip():
        chunks.append(work.rstrip())
    return chunks
