"""Stop strings on a token stream: emit text as soon as it cannot be the start of a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Feed streamed text pieces; get back what is safe to show and whether a stop string was hit.

    Text that could still turn into a stop string is held back until the next piece decides it.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._pending + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = self._longest_partial_stop(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_partial_stop(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-k:]):
                    best = k
                    break
        return best
