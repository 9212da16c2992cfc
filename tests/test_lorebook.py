"""Lorebook scanning: pure logic, no I/O (bot.domain.lorebook, lore_index, lore_scan)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from bot.domain.lore_index import contains_whole
from bot.domain.lore_scan import LoreSource, activate
from bot.domain.lorebook import Lorebook


def book(*entries: dict[str, Any], **settings: Any) -> Lorebook:
    return Lorebook.model_validate({"entries": list(entries), **settings})


def fire(b: Lorebook | list[Lorebook], *messages: str, budget: int = 10_000, book_budget: int = 10_000,
         **kwargs: Any) -> list[str]:
    books = b if isinstance(b, list) else [b]
    sources = [LoreSource(f"b{n}", x) for n, x in enumerate(books)]
    fired = activate(sources, list(messages), render=str, cost=lambda s: len(s.split()), budget=budget,
                     book_budget=book_budget, **kwargs)
    return [f.content for f in fired]


def test_a_key_in_the_new_message_fires_its_entry() -> None:
    b = book({"keys": ["dragon"], "content": "Dragons breathe fire."}, {"keys": ["elf"], "content": "Elves."})
    assert fire(b, "Tell me about the dragon") == ["Dragons breathe fire."]
    assert fire(b, "Tell me about dwarves") == []


def test_case_sensitivity_per_book_and_per_entry() -> None:
    b = book({"keys": ["Dragon"], "content": "A"}, {"keys": ["Elf"], "content": "B", "case_sensitive": True})
    assert fire(b, "a DRAGON and an elf") == ["A"]
    assert fire(book({"keys": ["Dragon"], "content": "A"}, case_sensitive=True), "a dragon") == []


def test_whole_words() -> None:
    b = book({"keys": ["cat"], "content": "Cats."}, match_whole_words=True)
    assert fire(b, "concatenate") == []
    assert fire(b, "my cat, Tom") == ["Cats."]
    assert fire(b, "CAT!") == ["Cats."]
    assert fire(book({"keys": ["cat"], "content": "Cats."}), "concatenate") == ["Cats."], "substring by default"
    multi = book({"keys": ["red dragon"], "content": "R"}, match_whole_words=True)
    assert fire(multi, "the red dragon sleeps") == ["R"]
    assert fire(multi, "bred dragons") == []


def test_contains_whole_checks_every_occurrence() -> None:
    assert contains_whole("cats and a cat", "cat")
    assert not contains_whole("cats concat", "cat")
    assert contains_whole("#tag here", "#tag")
    assert not contains_whole("über", "ber")


@pytest.mark.parametrize(
    ("logic", "text", "fires"),
    [
        ("and_any", "king and queen", True),
        ("and_any", "king alone", False),
        ("and_all", "king queen prince", True),
        ("and_all", "king queen", False),
        ("not_any", "king alone", True),
        ("not_any", "king and prince", False),
        ("not_all", "king queen", True),
        ("not_all", "king queen prince", False),
    ],
)
def test_secondary_key_logic(logic: str, text: str, fires: bool) -> None:
    b = book({"keys": ["king"], "secondary_keys": ["queen", "prince"], "logic": logic, "content": "X"})
    assert fire(b, text) == (["X"] if fires else [])


def test_secondary_keys_are_ignored_when_not_selective() -> None:
    b = book({"keys": ["king"], "secondary_keys": ["queen"], "selective": False, "content": "X"})
    assert fire(b, "king alone") == ["X"]


def test_constant_disabled_and_empty_entries() -> None:
    b = book({"constant": True, "content": "Always."}, {"keys": ["x"], "content": "Off.", "enabled": False},
             {"keys": ["x"], "content": "  "})
    assert fire(b, "x") == ["Always."]


def test_scan_depth_counts_the_newest_messages() -> None:
    b = book({"keys": ["sword"], "content": "S"}, {"keys": ["sword"], "content": "Deep", "scan_depth": 3},
             scan_depth=1)
    assert fire(b, "a sword", "hello", "there") == ["Deep"]
    assert fire(b, "a sword", "hello", "there", "more") == []
    assert fire(b, "hello", "a sword") == ["S", "Deep"]
    assert fire(book({"keys": ["sword"], "content": "S"}, scan_depth=0), "sword") == []


def test_recursion_fires_entries_named_by_fired_content_up_to_the_limit() -> None:
    chain = [
        {"keys": ["alpha"], "content": "alpha knows beta"},
        {"keys": ["beta"], "content": "beta knows gamma"},
        {"keys": ["gamma"], "content": "gamma knows delta"},
        {"keys": ["delta"], "content": "delta is last"},
    ]
    assert fire(book(*chain), "alpha") == ["alpha knows beta"], "no recursion by default"
    assert fire(book(*chain, recursive_scanning=True), "alpha") == [
        "alpha knows beta", "beta knows gamma", "gamma knows delta", "delta is last"]
    assert fire(book(*chain, recursive_scanning=True, max_recursion=1), "alpha") == [
        "alpha knows beta", "beta knows gamma"]


def test_exclude_and_prevent_recursion() -> None:
    entries = [
        {"keys": ["alpha"], "content": "alpha knows beta and gamma", "prevent_recursion": True},
        {"keys": ["beta"], "content": "B"},
        {"keys": ["alpha2"], "content": "names gamma"},
        {"keys": ["gamma"], "content": "G", "exclude_recursion": True},
    ]
    b = book(*entries, recursive_scanning=True, match_whole_words=True)
    assert fire(b, "alpha") == ["alpha knows beta and gamma"]
    assert fire(b, "alpha2") == ["names gamma"]
    assert fire(b, "alpha2 gamma") == ["names gamma", "G"]


def test_recursion_can_complete_secondary_keys() -> None:
    b = book({"keys": ["ship"], "content": "the captain is aboard"},
             {"keys": ["ship"], "secondary_keys": ["captain"], "content": "Captain's orders.", "insertion_order": 1},
             recursive_scanning=True)
    assert fire(b, "the ship") == ["the captain is aboard", "Captain's orders."]


def test_budget_keeps_the_highest_priority_and_stays_deterministic() -> None:
    b = book(
        {"keys": ["k"], "content": "low priority words here", "priority": 1},
        {"keys": ["k"], "content": "high priority words", "priority": 9},
        {"keys": ["k"], "content": "middle one", "insertion_order": 5},
    )
    assert fire(b, "k", budget=5) == ["high priority words", "middle one"]
    assert fire(b, "k", budget=5) == fire(b, "k", budget=5)
    # A book's own token_budget, else book_budget.
    assert fire(b.model_copy(update={"token_budget": 3}), "k") == ["high priority words"]
    assert fire(b, "k", book_budget=2) == ["middle one"]


def test_budgets_apply_per_book_and_in_total() -> None:
    a = book({"keys": ["k"], "content": "one two"}, token_budget=2)
    c = book({"keys": ["k"], "content": "three four"}, {"keys": ["k"], "content": "five"}, token_budget=10)
    assert fire([a, c], "k", budget=3) == ["one two", "five"]


def test_reply_count_and_greeting_conditions() -> None:
    b = book({"keys": ["x"], "content": "after", "only_after": 2}, {"keys": ["x"], "content": "every", "only_every": 3},
             {"keys": ["x"], "content": "greet1", "greeting": 1})
    assert fire(b, "x", replies=1, greeting=0) == []
    assert fire(b, "x", replies=3, greeting=1) == ["after", "every", "greet1"]
    assert fire(b, "x", replies=4) == ["after", "greet1"], "unknown greeting: the condition is ignored"


def test_regex_keys() -> None:
    b = book({"keys": ["/dra?gons?/i"], "content": "R"}, {"keys": [r"\bk\d+\b"], "use_regex": True, "content": "K"})
    assert fire(b, "DRGON k42") == ["R", "K"]
    assert fire(b, "nothing") == []


def test_catastrophic_regex_times_out_as_no_match() -> None:
    b = book({"keys": ["/(a+)+$/"], "content": "never"}, {"keys": ["a"], "content": "plain"})
    started = time.perf_counter()
    assert fire(b, "a" * 40 + "!") == ["plain"]
    assert time.perf_counter() - started < 2.0


def test_invalid_entries_are_rejected() -> None:
    with pytest.raises(ValidationError, match="invalid regex"):
        book({"keys": ["/(unclosed/"], "content": "x"})
    with pytest.raises(ValidationError, match="invalid regex"):
        book({"keys": ["(unclosed"], "use_regex": True, "content": "x"})
    with pytest.raises(ValidationError, match="unique"):
        book({"id": 1, "keys": ["a"], "content": "x"}, {"id": "1", "keys": ["b"], "content": "y"})
    with pytest.raises(ValidationError, match="unknown variable"):
        book({"keys": ["a"], "content": "Hello {nobody}"})


def test_fired_entries_name_their_book_and_id() -> None:
    b = book({"keys": ["a"], "content": "A", "id": "intro"}, {"keys": ["a"], "content": "B"})
    fired = activate([LoreSource("world", b)], ["a"], render=str, cost=len, budget=100, book_budget=100)
    assert [f.ref for f in fired] == ["world#intro", "world#1"]


def test_many_entries_share_keys_and_match_exactly() -> None:
    entries = [{"keys": [f"word{i}", "common"], "content": f"entry {i}"} for i in range(500)]
    b = book(*entries, match_whole_words=True)
    assert fire(b, "say word7 and word400") == ["entry 7", "entry 400"]
    assert len(fire(b, "common")) == 500
    assert fire(b, "word7x") == []


def test_a_copied_book_with_other_entries_gets_its_own_index() -> None:
    b = book({"keys": ["a"], "content": "A"})
    assert fire(b, "a") == ["A"]
    other = b.model_copy(update={"entries": book({"keys": ["z"], "content": "Z"}).entries})
    assert fire(other, "a") == [] and fire(other, "z") == ["Z"]
    assert fire(b, "a") == ["A"]
