"""Supervision state of the batch worker, shared by the worker thread and the event loop.

The worker thread reports when it enters and leaves a step; a consumer that has waited a while for
its row asks `problem()`, which answers why nothing more will come:

* the scheduler is **broken** (its supervisor gave up after repeated crashes): like
  concurrent.futures' BrokenProcessPool, every pending and future request fails at once;
* the worker thread is **dead** although nobody closed the scheduler (it died where no handler could
  run): the same, found by the consumers themselves;
* the worker is **stuck** inside one step for longer than `stall_timeout_s` (a hung kernel): the
  waiting consumers give up with a ModelError; the scheduler itself recovers if the step ever ends.
"""

from __future__ import annotations

import threading
import time


class WorkerHealth:
    def __init__(self, stall_timeout_s: float) -> None:
        if stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be positive")
        self.stall_timeout_s = stall_timeout_s
        self.thread: threading.Thread | None = None
        self.closed = False
        self.broken: str | None = None
        self._step_started: float | None = None

    def step_started(self) -> None:
        self._step_started = time.monotonic()

    def step_ended(self) -> None:
        self._step_started = None

    def dead(self) -> bool:
        """The worker thread ended without the scheduler being closed."""
        thread = self.thread
        return thread is not None and not thread.is_alive() and not self.closed

    def problem(self) -> str | None:
        """Why a waiting consumer should stop waiting, or None while the worker is serving."""
        if self.broken is not None:
            return self.broken
        if self.dead():
            return "the local model's worker stopped unexpectedly; restart the bot"
        started = self._step_started
        if started is not None and time.monotonic() - started > self.stall_timeout_s:
            return f"the local model has been stuck in one step for over {self.stall_timeout_s:.0f} s"
        return None
