from bot.domain.stops import StopScanner


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(p) for p in pieces) + scanner.flush()
    return out, scanner.stopped


def test_stop_split_across_pieces() -> None:
    assert feed_all(["User:"], ["Hello ", "Us", "er: more"]) == ("Hello ", True)


def test_partial_stop_that_does_not_complete_is_released() -> None:
    assert feed_all(["User:"], ["Hello Us", "ually fine"]) == ("Hello Usually fine", False)


def test_no_stops_passes_through() -> None:
    assert feed_all([], ["a", "b"]) == ("ab", False)


def test_text_is_released_as_soon_as_it_cannot_be_a_stop() -> None:
    scanner = StopScanner(["###"])
    assert scanner.feed("abc#") == "abc"
    assert scanner.feed("x") == "#x"
