"""Who runs the automatic decision: a supervised periodic task in the running bot.

Every `BOT_REFINE__CHECK_INTERVAL_S` seconds the watcher checks each running experiment and acts
on the decision (promote, roll back, wait for approval). A failing check is logged and retried at
the next tick; it never ends the task, and the task never ends the bot. Several bot processes may
run watchers: the store's per-persona lock lets one act at a time, and each re-reads the experiment
under the lock. Without a running bot, `python -m bot refine status --apply` does the same from cron.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from bot.errors import BotError
from bot.ports import FeedbackLog
from bot.refine.errors import ExperimentError
from bot.refine.experiments import Decision
from bot.refine.manager import ExperimentManager, ExperimentPolicy, PersonaSource
from bot.refine.store import RefineStore
from bot.settings import RefineSettings
from bot.tasks import alongside

log = logging.getLogger(__name__)


def policy_of(settings: RefineSettings) -> ExperimentPolicy:
    return ExperimentPolicy(
        fraction=settings.canary_fraction, alpha=settings.alpha, n_opt=float(settings.tuning_conversations),
        min_units=settings.min_conversations, max_days=settings.max_days, max_length_ratio=settings.max_length_ratio,
        approve=settings.approve, scan_limit=settings.scan_limit,
    )  # fmt: skip


async def check_all(manager: ExperimentManager) -> dict[str, Decision | str]:
    """Check and act on every running experiment; {persona: decision, or why it was skipped}."""
    out: dict[str, Decision | str] = {}
    for experiment in await manager.store.running():
        pid = experiment.persona_id
        try:
            out[pid] = await manager.check(pid, apply=True)
        except ExperimentError as exc:  # locked by another process, or ended meanwhile
            out[pid] = str(exc)
        except BotError as exc:
            log.warning("refine check of %s failed: %s", pid, exc)
            out[pid] = str(exc)
    return out


class RefineWatcher:
    def __init__(self, manager: ExperimentManager, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                for pid, result in (await check_all(self.manager)).items():
                    if isinstance(result, Decision) and result.action != "continue":
                        log.warning("refine: %s: %s (%s)", pid, result.action, result.reason)
            except Exception:  # supervised: a failed tick is logged, the next one runs
                log.exception("refine watcher tick failed")
            self.ticks += 1


@asynccontextmanager
async def refine_watcher(settings: RefineSettings, store: RefineStore, log_: FeedbackLog, personas: PersonaSource,
                         data_dir: Path, *, on_written: Callable[[], object] | None = None
                         ) -> AsyncIterator[RefineWatcher | None]:
    """Run the watcher while the block runs (nothing when check_interval_s is 0)."""
    if settings.check_interval_s <= 0:
        yield None
        return
    manager = ExperimentManager(store, log_, personas, policy_of(settings), data_dir,
                                on_written=on_written)
    watcher = RefineWatcher(manager, settings.check_interval_s)
    async with alongside(watcher.run(), name="refine-watcher"):
        yield watcher
