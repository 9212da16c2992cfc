"""Which lorebook entries fire for one turn, and which of them fit the budget. Pure and deterministic.

    fired = activate(sources, messages, render=..., cost=..., budget=..., book_budget=...)

1. Level 0: constant entries, and entries with a key in their scan window (the newest `scan_depth`
   messages, as the model reads them), secondary keys checked by the entry's logic.
2. The candidates of a level are ranked (priority, else insertion_order: higher first; then book and
   entry order) and taken while they fit their book's budget and the total budget.
3. Recursion: in books with `recursive_scanning`, the content of the entries just taken is scanned
   too (unless they `prevent_recursion`), up to `max_recursion` levels; entries that
   `exclude_recursion` cannot fire this way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bot.domain.lorebook import Lorebook, LoreEntry


@dataclass(frozen=True, slots=True)
class LoreSource:
    """A book as one persona uses it: `ref` names it in reply records ("persona" or the shared name)."""

    ref: str
    book: Lorebook


@dataclass(frozen=True, slots=True)
class FiredEntry:
    ref: str  # "book#entry", as reply records list it
    entry: LoreEntry
    content: str  # rendered
    cost: int
    place: tuple[int, int, int]  # (insertion_order, book, entry): the order in the prompt


@dataclass(slots=True)
class _BookScan:
    """One book's view of this turn: the keys in each scan window, and what recursion has added."""

    source: LoreSource
    messages: Sequence[str]
    replies: int
    greeting: int | None
    windows: dict[int, frozenset[int]] = field(default_factory=dict)
    recursed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        index = self.source.book.index
        if not index.depths:
            return
        newest = list(reversed(self.messages[-max(index.depths) :])) if max(index.depths) else []
        seen: set[int] = set()
        taken = 0
        for depth in index.depths:
            for text in newest[taken:depth]:
                seen |= index.keys_in(text)
            taken = max(taken, depth)
            self.windows[depth] = frozenset(seen)

    def first_level(self) -> list[int]:
        index = self.source.book.index
        hit = self.windows.get(max(index.depths), frozenset()) if index.depths else frozenset()
        candidates = set(index.constants)
        for key in hit:
            candidates.update(index.by_key.get(key, ()))
        return sorted(i for i in candidates if self._fires(i, recursion=False))

    def recursion_level(self, text: str, done: set[tuple[int, int]], book: int) -> list[int]:
        index = self.source.book.index
        self.recursed |= index.keys_in(text)
        hit = set(self.recursed)
        if index.depths:
            hit |= self.windows[max(index.depths)]
        candidates: set[int] = set()
        for key in hit:
            candidates.update(index.by_key.get(key, ()))
        return sorted(
            i for i in candidates
            if (book, i) not in done and not self.source.book.entries[i].exclude_recursion
            and self._fires(i, recursion=True)
        )

    def _fires(self, i: int, *, recursion: bool) -> bool:
        book = self.source.book
        entry, index = book.entries[i], book.index
        if not index.live[i] or not self._allowed_now(entry):
            return False
        if entry.constant and not recursion:
            return True
        found = self.windows.get(index.scan_depths[i], frozenset())
        if recursion:
            found = found | self.recursed
        if not any(k in found for k in index.primary[i]):
            return False
        secondary = index.secondary[i]
        if not secondary:
            return True
        hits = [k in found for k in secondary]
        match entry.logic:
            case "and_any":
                return any(hits)
            case "and_all":
                return all(hits)
            case "not_any":
                return not any(hits)
            case _:  # not_all
                return not all(hits)

    def _allowed_now(self, entry: LoreEntry) -> bool:
        if entry.only_after is not None and self.replies < entry.only_after:
            return False
        if entry.only_every is not None and self.replies % entry.only_every:
            return False
        return entry.greeting is None or self.greeting is None or entry.greeting == self.greeting


def _rank(sources: Sequence[LoreSource], book: int, i: int) -> tuple[int, int, int, int]:
    entry = sources[book].book.entries[i]
    priority = entry.insertion_order if entry.priority is None else entry.priority
    return (-priority, -entry.insertion_order, book, i)


def activate(
    sources: Sequence[LoreSource],
    messages: Sequence[str],
    *,
    render: Callable[[str], str],
    cost: Callable[[str], int],
    budget: int,
    book_budget: int,
    replies: int = 0,
    greeting: int | None = None,
) -> list[FiredEntry]:
    """The entries that fire and fit, in the order they fired.

    `messages`: the conversation as the model reads it, newest last (the new message included).
    `render` fills an entry's template; `cost` is its price in tokens. `budget` caps all entries
    together; `book_budget` caps each book without a `token_budget` of its own. `replies` (the
    persona's earlier replies) and `greeting` (the greeting that opened the chat) serve the
    only_after/only_every/greeting conditions.
    """
    scans = [_BookScan(s, messages, replies, greeting) for s in sources]
    spent = [0] * len(sources)
    total = 0
    done: set[tuple[int, int]] = set()
    fired: list[FiredEntry] = []
    candidates = [(b, i) for b, scan in enumerate(scans) for i in scan.first_level()]
    level = 0
    while candidates:
        taken: list[FiredEntry] = []
        for b, i in sorted(candidates, key=lambda c: _rank(sources, *c)):
            done.add((b, i))
            book = sources[b].book
            content = render(book.entries[i].content).strip()
            price = cost(content) if content else 0
            cap = book_budget if book.token_budget is None else book.token_budget
            if not content or spent[b] + price > cap or total + price > budget:
                continue
            spent[b] += price
            total += price
            entry = book.entries[i]
            taken.append(FiredEntry(f"{sources[b].ref}#{book.entry_ref(i)}", entry, content, price,
                                    (entry.insertion_order, b, i)))
        fired += taken
        level += 1
        text = "\n".join(f.content for f in taken if not f.entry.prevent_recursion)
        if not text:
            break
        candidates = [
            (b, i)
            for b, scan in enumerate(scans)
            if scan.source.book.recursive_scanning and level <= scan.source.book.max_recursion
            for i in scan.recursion_level(text, done, b)
        ]
    return fired
