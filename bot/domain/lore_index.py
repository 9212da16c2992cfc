"""Precompiled lorebook keys: which keys of a book occur in a text, fast.

Checking every key of every entry against every message costs (keys x text). Instead each literal key
is filed under one *anchor* that must occur in any text containing it — its rarest word (whole-word
matching) or its rarest three-character slice (substring matching). A text is cut into its words or
slices once; only keys whose anchor is among them are checked for real (`str.find`, in C). With
10,000 entries most messages check a handful of keys (bench/lorebook_scan.py measures it).

Regex keys cannot be anchored; they run one by one with a timeout (the `regex` module's), so a
catastrophic pattern costs a few milliseconds and counts as no match, never a hang.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from bot.domain.lorebook import compile_key_regex, slashed_regex

if TYPE_CHECKING:
    from bot.domain.lorebook import Lorebook, LoreEntry

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
GRAM = 3
#: One regex search may take this long before it counts as no match; all regex keys of one text, REGEX_TOTAL_S.
REGEX_TIMEOUT_S = 0.005
REGEX_TOTAL_S = 0.025
_CACHE_SIZE = 512


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"  # the same characters as re's \w


def contains_whole(text: str, key: str) -> bool:
    """`key` occurs in `text` with no letter, digit or underscore right before or after it."""
    start, size, end = 0, len(key), len(text)
    while (i := text.find(key, start)) >= 0:
        after = i + size
        if (i == 0 or not _is_word(text[i - 1])) and (after == end or not _is_word(text[after])):
            return True
        start = i + 1
    return False


class _LiteralKeys:
    """The literal keys of one matching mode (case folding x whole words)."""

    def __init__(self, fold: bool, whole: bool) -> None:
        self.fold = fold
        self.whole = whole
        self.keys: list[str] = []
        self.ids: list[int] = []  # global key id of each local key
        self._local: dict[str, int] = {}
        self.anchors: dict[str, list[int]] = {}
        self.always: list[int] = []  # keys without an anchor: checked against every text

    def add(self, key: str, next_id: int) -> tuple[str, bool]:
        """File `key`; returns its folded form and whether it is new (then it takes `next_id`)."""
        folded = key.casefold() if self.fold else key
        if folded in self._local:
            return folded, False
        self._local[folded] = len(self.keys)
        self.keys.append(folded)
        self.ids.append(next_id)
        return folded, True

    def global_id(self, folded: str) -> int:
        return self.ids[self._local[folded]]

    def _pieces(self, key: str) -> list[str]:
        if self.whole:
            return _WORD.findall(key)
        return [key[i : i + GRAM] for i in range(len(key) - GRAM + 1)]

    def finish(self) -> None:
        """Choose each key's anchor: the piece fewest other keys share (short buckets, few checks)."""
        pieces = [self._pieces(k) for k in self.keys]
        freq = Counter(p for ps in pieces for p in set(ps))
        for local, ps in enumerate(pieces):
            if not ps:
                self.always.append(local)
            else:
                self.anchors.setdefault(min(ps, key=lambda p: (freq[p], p)), []).append(local)
        self._local.clear()

    def matches(self, text: str, out: set[int]) -> None:
        if not self.keys:
            return
        if self.fold:
            text = text.casefold()
        check: Callable[[str, str], bool]
        if self.whole:
            present: Iterable[str] = set(_WORD.findall(text))
            check = contains_whole
        else:
            present = {text[i : i + GRAM] for i in range(len(text) - GRAM + 1)}
            check = str.__contains__
        keys, ids, anchors = self.keys, self.ids, self.anchors
        for piece in present:
            bucket = anchors.get(piece)
            if bucket is not None:
                for local in bucket:
                    if check(text, keys[local]):
                        out.add(ids[local])
        for local in self.always:
            if check(text, keys[local]):
                out.add(ids[local])


class LoreIndex:
    """A lorebook's keys, compiled once: `keys_in(text)` gives the ids of the keys a text contains."""

    def __init__(self, book: Lorebook) -> None:
        self.book = book
        self._modes: dict[tuple[bool, bool], _LiteralKeys] = {}
        self._regexes: list[tuple[Any, int]] = []
        self._regex_ids: dict[tuple[str, bool], int] = {}
        self._next_id = 0
        self.primary: list[tuple[int, ...]] = []
        self.secondary: list[tuple[int, ...]] = []
        self.by_key: dict[int, list[int]] = {}
        self.constants: list[int] = []
        self.live: list[bool] = []  # enabled, with content: can fire at all
        self.scan_depths: list[int] = []
        for i, entry in enumerate(book.entries):
            self._add_entry(i, entry)
        for mode in self._modes.values():
            mode.finish()
        self.depths = sorted({d for d, live in zip(self.scan_depths, self.live, strict=True) if live})
        self._cache: dict[str, frozenset[int]] = {}

    def _add_entry(self, index: int, entry: LoreEntry) -> None:
        book = self.book
        live = entry.enabled and bool(entry.content.strip())
        self.live.append(live)
        self.scan_depths.append(book.scan_depth if entry.scan_depth is None else entry.scan_depth)
        fold = not (book.case_sensitive if entry.case_sensitive is None else entry.case_sensitive)
        whole = book.match_whole_words if entry.match_whole_words is None else entry.match_whole_words
        self.primary.append(tuple(self._key_id(k, entry, fold, whole) for k in entry.keys) if live else ())
        selective = live and entry.selective
        self.secondary.append(tuple(self._key_id(k, entry, fold, whole) for k in entry.secondary_keys)
                              if selective else ())
        if not live:
            return
        if entry.constant:
            self.constants.append(index)
        for key_id in set(self.primary[index]):
            self.by_key.setdefault(key_id, []).append(index)

    def _key_id(self, key: str, entry: LoreEntry, fold: bool, whole: bool) -> int:
        key = key.strip()
        if entry.use_regex or slashed_regex(key):
            name = (key, not fold)
            if name not in self._regex_ids:
                self._regex_ids[name] = self._next_id
                self._regexes.append((compile_key_regex(key, not fold), self._next_id))
                self._next_id += 1
            return self._regex_ids[name]
        mode = self._modes.setdefault((fold, whole), _LiteralKeys(fold, whole))
        folded, new = mode.add(key, self._next_id)
        if new:
            self._next_id += 1
        return mode.global_id(folded)

    def keys_in(self, text: str) -> frozenset[int]:
        """Ids of every key that occurs in `text` (memoized: history messages come back every turn)."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        found: set[int] = set()
        for mode in self._modes.values():
            mode.matches(text, found)
        if self._regexes:
            self._regex_matches(text, found)
        result = frozenset(found)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = result
        return result

    def _regex_matches(self, text: str, out: set[int]) -> None:
        deadline = time.perf_counter() + REGEX_TOTAL_S
        for pattern, key_id in self._regexes:
            left = deadline - time.perf_counter()
            if left <= 0:
                log.warning("lorebook %r: regex keys ran out of time; the rest count as no match", self.book.name)
                return
            try:
                if pattern.search(text, timeout=min(left, REGEX_TIMEOUT_S)) is not None:
                    out.add(key_id)
            except TimeoutError:
                log.warning("lorebook %r: regex key %r timed out (no match)", self.book.name, pattern.pattern[:60])
