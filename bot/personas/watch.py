"""Hot reload: poll the persona files (and the adapter files they name) and refresh the registry.

    watcher = PersonaWatcher(registry, interval=1.0)
    task = watcher.start()          # a supervised asyncio task: an error is logged, polling goes on
    watcher.request()               # reload now (SIGHUP, `/persona reload`)
    await watcher.stop()

Polling (stat of a few files a second) needs no dependency and behaves the same on every OS, in
containers and on network mounts, where change notifications are unreliable. A change reaches the
next message after at most `interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bot.personas.registry import FilePersonaRegistry, PersonaChanges, Stamp

log = logging.getLogger(__name__)


class PersonaWatcher:
    def __init__(self, registry: FilePersonaRegistry, *, interval: float = 1.0) -> None:
        self.registry = registry
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: Stamp | None = None

    def start(self) -> asyncio.Task[None]:
        """Start polling (idempotent); the current files are taken as already loaded."""
        if self._task is None or self._task.done():
            self._last = self.registry.stamp()
            self._task = asyncio.create_task(self._run(), name="persona-watcher")
            self._task.add_done_callback(_report_end)
        return self._task

    def request(self) -> None:
        """Reload at once (thread-unsafe: call it on the event loop, e.g. from a signal handler)."""
        self._last = None
        self._wake.set()

    async def reload_now(self) -> PersonaChanges:
        """Reload now and return what changed (for `/persona reload`)."""
        self._last = await asyncio.to_thread(self.registry.stamp)
        return await self.registry.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.poll()
            except Exception:  # supervised: one failed poll is logged, the next one tries again
                log.exception("persona reload failed; will retry")

    async def poll(self) -> PersonaChanges | None:
        """Reload if a watched file changed since the last poll; returns the changes, or None."""
        stamp = await asyncio.to_thread(self.registry.stamp)
        if stamp == self._last:
            return None
        # The stamp from before the refresh: a file written during it shows up at the next poll (and
        # new personas' adapter files, not in this stamp yet, cost one extra no-op refresh).
        self._last = stamp
        return await self.registry.refresh()


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the persona watcher stopped: %r", task.exception())
