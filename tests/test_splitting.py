"""Reply splitting for Discord's 2,000-character limit (bot.domain.splitting)."""

from __future__ import annotations

import random
import re

import pytest

from bot.domain.splitting import DISCORD_LIMIT, find_fences, split_message

#: Language tags used below; a split may repeat them (reopened fences), so the check drops them.
LANGS = re.compile(r"python|rust|js|sh|c\+\+|text")


def content(text: str) -> str:
    """Text without fence markers, language tags and whitespace: what a split must preserve."""
    return "".join(LANGS.sub("", text.replace("`", "").replace("~", "")).split())


def assert_valid_split(text: str, chunks: list[str], limit: int) -> None:
    assert chunks, "a non-empty text gives at least one message"
    for chunk in chunks:
        assert 0 < len(chunk) <= limit
        assert chunk.strip()
    for chunk in chunks[:-1]:
        assert all(f.close < len(chunk) for f in find_fences(chunk)), f"unclosed fence in {chunk[-60:]!r}"
    assert content("".join(chunks)) == content(text)


def sentence(n: int) -> str:
    return f"This is sentence number {n} of the reply, and it says something useful."


# -- short texts --------------------------------------------------------------------------------


def test_short_text_is_one_message_unchanged() -> None:
    assert split_message("Hello there.\n\nSecond paragraph.") == ["Hello there.\n\nSecond paragraph."]


def test_exactly_the_limit_is_one_message() -> None:
    text = "x" * DISCORD_LIMIT
    assert split_message(text) == [text]


@pytest.mark.parametrize("text", ["", "\n\n", "   "])
def test_empty_text_gives_no_messages(text: str) -> None:
    assert split_message(text) == []


def test_tiny_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        split_message("hello", limit=5)


# -- boundary preference ------------------------------------------------------------------------


def test_prefers_paragraph_breaks() -> None:
    first = " ".join(sentence(i) for i in range(8))  # ~580 chars
    second = " ".join(sentence(i) for i in range(8, 12))
    text = f"{first}\n\n{second}"
    chunks = split_message(text, limit=700)
    assert chunks == [first, second]


def test_falls_back_to_line_breaks() -> None:
    lines = [sentence(i) for i in range(12)]
    text = "\n".join(lines)
    chunks = split_message(text, limit=500)
    assert_valid_split(text, chunks, 500)
    for chunk in chunks:
        assert chunk.endswith("."), "each message ends on a whole line"
        assert chunk.splitlines()[0] in lines


def test_falls_back_to_sentences() -> None:
    text = " ".join(sentence(i) for i in range(30))  # one long line
    chunks = split_message(text, limit=400)
    assert_valid_split(text, chunks, 400)
    assert all(c.endswith("useful.") for c in chunks)
    assert all(c.startswith("This is sentence") for c in chunks)


def test_falls_back_to_words() -> None:
    text = " ".join(f"word{i}" for i in range(400))  # no sentence ends
    chunks = split_message(text, limit=300)
    assert_valid_split(text, chunks, 300)
    words = text.split()
    assert [w for c in chunks for w in c.split()] == words, "no word is cut in two"


def test_hard_cut_without_any_boundary() -> None:
    text = "a" * 4500
    chunks = split_message(text)
    assert [len(c) for c in chunks] == [2000, 2000, 500]


def test_small_early_boundary_is_not_taken() -> None:
    """A paragraph break near the start would leave a tiny message; a later line break wins."""
    text = "Hi.\n\n" + "\n".join(sentence(i) for i in range(20))
    chunks = split_message(text, limit=600)
    assert len(chunks[0]) > 200
    assert_valid_split(text, chunks, 600)


# -- code blocks --------------------------------------------------------------------------------


def code_block(lines: int, lang: str = "python") -> str:
    body = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(lines))
    return f"```{lang}\n{body}\n```"


def test_splits_before_a_code_block_rather_than_inside() -> None:
    prose = " ".join(sentence(i) for i in range(10))  # ~730 chars
    code = code_block(30)  # ~1300 chars
    text = f"{prose}\n\n{code}\n\nThat is all."
    chunks = split_message(text, limit=1500)
    assert chunks[0] == prose
    assert chunks[1].startswith("```python\n")
    assert_valid_split(text, chunks, 1500)


def test_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    text = "Here is the code:\n\n" + code_block(120, "rust") + "\n\nDone."
    chunks = split_message(text)
    assert len(chunks) >= 3
    assert_valid_split(text, chunks, DISCORD_LIMIT)
    for chunk in chunks[:-1]:
        assert chunk.endswith("\n```")
    for chunk in chunks[1:]:
        assert chunk.startswith("```rust\n")
    for chunk in chunks:
        # Cuts inside the code happen between lines: every code line is whole.
        for line in chunk.splitlines():
            assert line.startswith(("```", "    value_", "Here is", "Done")) or not line


def test_code_lines_keep_their_indentation_across_a_split() -> None:
    text = code_block(100)
    chunks = split_message(text, limit=500)
    assert_valid_split(text, chunks, 500)
    for chunk in chunks[1:]:
        assert chunk.splitlines()[1].startswith("    value_")


def test_tilde_fences_and_longer_markers_are_respected() -> None:
    body = "\n".join(f"line {i} with ``` inside" for i in range(80))
    text = f"~~~~text\n{body}\n~~~~"
    chunks = split_message(text, limit=600)
    assert_valid_split(text, chunks, 600)
    assert all(c.startswith("~~~~text\n") and c.endswith("\n~~~~") for c in chunks)


def test_code_block_without_language_reopens_bare() -> None:
    text = code_block(100, lang="")
    chunks = split_message(text, limit=400)
    assert all(c.startswith("```\n") for c in chunks)
    assert_valid_split(text, chunks, 400)


def test_a_5000_character_reply_with_code() -> None:
    prose = "\n\n".join(" ".join(sentence(j) for j in range(i, i + 5)) for i in range(0, 25, 5))
    text = f"{prose}\n\n{code_block(90, 'js')}\n\nHope that helps!"
    assert len(text) > 5000
    chunks = split_message(text)
    assert_valid_split(text, chunks, DISCORD_LIMIT)
    assert chunks[-1].endswith("Hope that helps!")


def test_unclosed_code_block_at_the_end_stays_open_only_in_the_last_message() -> None:
    text = "Look:\n\n```python\n" + "\n".join(f"x_{i} = {i}" for i in range(400))
    chunks = split_message(text)
    assert_valid_split(text, chunks, DISCORD_LIMIT)
    assert chunks[-1].startswith("```python\n")


def test_info_string_that_is_not_a_language_is_not_repeated() -> None:
    body = "\n".join(f"row {i}" for i in range(200))
    chunks = split_message(f"```not a language tag\n{body}\n```", limit=300)
    assert chunks[0].startswith("```not a language tag\n")
    assert all(c.startswith("```\n") for c in chunks[1:])


def test_a_closing_marker_followed_by_text_closes_the_block_as_in_discord() -> None:
    text = "```py\nx = 1\n``` and then prose " + "words " * 100
    chunks = split_message(text, limit=200)
    assert chunks[0].startswith("```py\nx = 1\n```")
    assert not any(c.startswith("```py") for c in chunks[1:])


# -- properties on random texts -----------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.2:
            lang = rng.choice(["", "python", "sh", "c++"])
            lines = [" " * rng.randint(0, 8) + "x" * rng.randint(0, 120) for _ in range(rng.randint(1, 60))]
            parts.append(f"```{lang}\n" + "\n".join(lines) + "\n```")
        elif kind < 0.3:
            parts.append("y" * rng.randint(1, 3000))
        else:
            vocabulary = ["alpha", "beta.", "gamma!", "delta?", "eps", "\n", "zeta,"]
            words = [rng.choice(vocabulary) for _ in range(200)]
            parts.append(" ".join(words))
    return rng.choice(["\n\n", "\n"]).join(parts)


@pytest.mark.parametrize("seed", range(60))
def test_random_texts_split_validly(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng)
    limit = rng.choice([120, 500, DISCORD_LIMIT])
    chunks = split_message(text, limit=limit)
    assert_valid_split(text, chunks, limit)


def test_splitting_is_stable_for_a_growing_text() -> None:
    """Streaming re-splits a growing text: earlier full messages must not change as it grows."""
    rng = random.Random(7)
    text = random_text(rng) + "\n\n" + " ".join(sentence(i) for i in range(60))
    full = split_message(text)
    for end in range(DISCORD_LIMIT * 2, len(text), 97):
        partial = split_message(text[:end])
        settled = partial[:-2]  # the last two may still move while the text grows
        assert settled == full[: len(settled)]
