"""Lorebooks (world info): background text that enters the prompt when its keys come up.

A lorebook is a list of entries. An entry fires when one of its `keys` appears in the last
`scan_depth` messages (optionally also its `secondary_keys`, combined by `logic`), or always when it
is `constant`. Fired entries are placed at their `position` (in the system message, before the
conversation, or at a depth inside it), within a token budget. The semantics follow the Character
Card V2/V3 `character_book` and SillyTavern's world info; see the README's lorebook section.

This module holds the validated data; bot.domain.lore_index precompiles the keys and
bot.domain.lore_scan decides what fires. All pure: loading files lives in bot.personas.lorebooks.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from bot.domain.lore_index import LoreIndex

LoreLogic = Literal["and_any", "not_any", "not_all", "and_all"]
LorePosition = Literal["before_system", "before_character", "after_character", "before_history", "at_depth"]
LoreRole = Literal["system", "user", "assistant"]

#: Limits (documented in the README): a lorebook is data from the internet as often as not.
MAX_ENTRIES = 20_000
MAX_KEYS = 100
MAX_KEY_LENGTH = 200
MAX_CONTENT_LENGTH = 100_000
MAX_SCAN_DEPTH = 1000
MAX_RECURSION = 10
MAX_REGEX_LENGTH = 500
DEFAULT_SCAN_DEPTH = 2  # SillyTavern's default: the new message and the reply before it
DEFAULT_DEPTH = 4

#: SillyTavern's regex key syntax: /pattern/flags.
_SLASHED = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
_REGEX_FLAGS = {"i": regex.IGNORECASE, "s": regex.DOTALL, "m": regex.MULTILINE, "u": 0, "g": 0, "y": 0}


def slashed_regex(key: str) -> tuple[str, str] | None:
    """(pattern, flags) when `key` is written /pattern/flags, else None."""
    match = _SLASHED.match(key)
    if match is None or any(f not in _REGEX_FLAGS for f in match.group(2)):
        return None
    return match.group(1), match.group(2)


@functools.lru_cache(maxsize=4096)
def compile_key_regex(key: str, case_sensitive: bool) -> regex.Pattern[str]:
    """The compiled pattern of a regex key (plain or /pattern/flags). Raises ValueError."""
    slashed = slashed_regex(key)
    pattern, flags = slashed if slashed else (key, "")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"regex key longer than {MAX_REGEX_LENGTH} characters")
    bits = regex.V0
    for flag in flags:
        bits |= _REGEX_FLAGS[flag]
    if not slashed and not case_sensitive:
        bits |= regex.IGNORECASE
    try:
        return regex.compile(pattern, bits)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regex key {key!r}: {exc}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoreEntry(_Strict):
    """One lorebook entry. Unset matching options fall back to the lorebook's."""

    id: int | str | None = Field(default=None, description="Stable id, used in reply records (default: index).")
    name: str = Field(default="", max_length=500)
    comment: str = Field(default="", max_length=10_000)
    keys: tuple[str, ...] = Field(default=(), max_length=MAX_KEYS)
    secondary_keys: tuple[str, ...] = Field(default=(), max_length=MAX_KEYS)
    #: Whether secondary_keys apply at all (Character Card V2 `selective`).
    selective: bool = True
    logic: LoreLogic = "and_any"
    content: str = Field(default="", max_length=MAX_CONTENT_LENGTH)
    enabled: bool = True
    constant: bool = False
    use_regex: bool = False
    case_sensitive: bool | None = None
    match_whole_words: bool | None = None
    #: Lower comes first in the prompt; with priority unset, also the budget rank (higher kept).
    insertion_order: int = 100
    #: Budget rank: when entries do not all fit, the lowest priority goes first.
    priority: int | None = None
    position: LorePosition = "after_character"
    depth: int = Field(default=DEFAULT_DEPTH, ge=0, le=MAX_SCAN_DEPTH)
    role: LoreRole = "system"
    scan_depth: int | None = Field(default=None, ge=0, le=MAX_SCAN_DEPTH)
    exclude_recursion: bool = Field(default=False, description="Cannot be fired by another entry's content.")
    prevent_recursion: bool = Field(default=False, description="Its content does not fire other entries.")
    only_after: int | None = Field(default=None, ge=0, description="Fires once the persona has replied N times.")
    only_every: int | None = Field(default=None, ge=1, description="Fires when the reply count is a multiple of N.")
    greeting: int | None = Field(default=None, ge=0, description="Fires only when this greeting opened the chat.")
    #: Character Card V3 decorators this bot does not interpret, kept so an export loses nothing.
    decorators: tuple[str, ...] = Field(default=(), max_length=64)
    extensions: dict[str, Any] = Field(default_factory=dict)

    @field_validator("keys", "secondary_keys")
    @classmethod
    def _clean_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if len(key) > MAX_KEY_LENGTH:
                raise ValueError(f"key longer than {MAX_KEY_LENGTH} characters: {key[:40]!r}...")
        return tuple(k for k in keys if k.strip())

    @field_validator("content")
    @classmethod
    def _known_variables(cls, value: str) -> str:
        from bot.domain.persona import check_template  # persona imports this module

        return check_template(value)

    @model_validator(mode="after")
    def _valid_regexes(self) -> LoreEntry:
        for key in (*self.keys, *self.secondary_keys):
            if self.use_regex or slashed_regex(key):
                compile_key_regex(key, bool(self.case_sensitive))
        return self


class Lorebook(_Strict):
    """A book of entries, inline in a persona (`lorebook:`) or shared (personas/lorebooks/NAME.yaml)."""

    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=10_000)
    scan_depth: int = Field(default=DEFAULT_SCAN_DEPTH, ge=0, le=MAX_SCAN_DEPTH)
    #: Most tokens this book's entries may take (default: a quarter of the prompt budget).
    token_budget: int | None = Field(default=None, ge=1)
    recursive_scanning: bool = False
    max_recursion: int = Field(default=3, ge=0, le=MAX_RECURSION)
    case_sensitive: bool = False
    match_whole_words: bool = False
    extensions: dict[str, Any] = Field(default_factory=dict)
    entries: tuple[LoreEntry, ...] = Field(default=(), max_length=MAX_ENTRIES)

    @model_validator(mode="after")
    def _unique_ids(self) -> Lorebook:
        ids = [e.id for e in self.entries if e.id is not None]
        if len(set(map(str, ids))) != len(ids):
            seen: set[str] = set()
            dup = next(str(i) for i in ids if str(i) in seen or seen.add(str(i)))  # type: ignore[func-returns-value]
            raise ValueError(f"entry ids must be unique (duplicate: {dup})")
        return self

    def entry_ref(self, index: int) -> str:
        """The entry's id in reply records: its `id`, else its position in the book."""
        entry = self.entries[index]
        return str(index if entry.id is None else entry.id)

    @property
    def index(self) -> LoreIndex:
        """The precompiled keys (built once per loaded book, shared by every persona using it).

        Kept in the instance dict like a cached_property, but checked to belong to this very book:
        `model_copy` copies that dict, and a copy with other entries must not reuse the index."""
        from bot.domain.lore_index import LoreIndex

        index = self.__dict__.get("_lore_index")
        if index is None or index.book is not self:
            index = LoreIndex(self)
            self.__dict__["_lore_index"] = index
        return index
