"""Running experiments: start a canary, check it, promote or roll it back — every step journaled.

The persona file is the source of truth for what users get (the canary is a variant in it,
reviewable in git); the store holds the experiment's bookkeeping and the journal. Writes happen in
an order that never leaves a canary without its experiment: the experiment is saved before the
canary is written (and removed again if the write fails), and it ends only after the file is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from bot.domain.persona import Persona
from bot.errors import BotError, PersonaNotFound
from bot.ports import FeedbackLog
from bot.refine.candidates import Candidate
from bot.refine.errors import ExperimentError, GateRejected
from bot.refine.experiments import Decision, Experiment, collect, decide
from bot.refine.gate import GateReport
from bot.refine.personafile import add_canary, next_version, promote_canary, remove_canary
from bot.refine.store import JournalEntry, RefineStore

log = logging.getLogger(__name__)


class PersonaSource(Protocol):
    """What refine needs of the persona registry: the persona and the file it came from."""

    def get(self, persona_id: str) -> Persona: ...

    def source(self, persona_id: str) -> Path | None: ...


@dataclass(frozen=True)
class ExperimentPolicy:
    """How experiments are run (from RefineSettings)."""

    fraction: float = 0.1
    alpha: float = 0.05
    n_opt: float = 500.0
    min_units: int = 30
    max_days: float = 14.0
    max_length_ratio: float = 2.0
    approve: bool = False
    scan_limit: int = 20_000


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


class ExperimentManager:
    def __init__(self, store: RefineStore, log: FeedbackLog, personas: PersonaSource, policy: ExperimentPolicy,
                 data_dir: Path, *, on_written: Callable[[], object] | None = None) -> None:
        self.store = store
        self.log = log
        self.personas = personas
        self.policy = policy
        self.data_dir = data_dir
        self.on_written = on_written

    async def note(self, persona_id: str, kind: str, summary: str, **data: object) -> None:
        await self.store.journal(JournalEntry(persona_id, kind, summary, dict(data)))

    def _written(self) -> None:
        if self.on_written is not None:
            self.on_written()

    def _file(self, persona_id: str) -> Path:
        path = self.personas.source(persona_id)
        if path is None:
            raise PersonaNotFound(persona_id)
        return path

    # -- start --------------------------------------------------------------------------------

    async def start(self, persona_id: str, report: GateReport, candidate: Candidate, *,
                    fraction: float | None = None, approve: bool | None = None) -> Experiment:
        """Put a candidate that passed the gate live as a canary variant."""
        persona = self.personas.get(persona_id)
        result = report.result(candidate.id)
        if result is None or not result.passed:
            why = "; ".join(result.reasons) if result else "it was not evaluated"
            raise GateRejected(f"candidate {candidate.id} did not pass the offline gate ({why}); it cannot go live")
        if report.version != persona.version or candidate.parent_version != persona.version:
            raise GateRejected(f"the gate ran on {persona_id} v{report.version}; the persona is now "
                               f"v{persona.version}: evaluate again")
        path, share = self._file(persona_id), self.policy.fraction if fraction is None else fraction
        p = self.policy
        experiment = Experiment(
            persona_id, candidate.to_dict(), candidate.id, persona.version, str(path), False, share, time.time(),
            p.alpha, p.n_opt, p.min_units, p.max_days, p.max_length_ratio, p.approve if approve is None else approve,
            gate=result.to_dict() | {"validation_items": len(result.validation.items)},
        )
        async with self.store.lock(persona_id):
            if await self.store.experiment(persona_id) is not None:
                raise ExperimentError(f"{persona_id} already has a canary running: promote or roll it back first")
            await self.store.save_experiment(experiment)
            note = (f"refine canary {candidate.id}: {candidate.proposer} candidate for v{persona.version}, "
                    f"{share:.0%} of conversations since {_day(experiment.started_at)}; see `python -m bot refine "
                    f"status {persona_id}`")
            try:
                _, experiment.added_control = add_canary(path, candidate, share, note=note)
            except BaseException:
                await self.store.end_experiment(persona_id)
                raise
            await self.store.save_experiment(experiment)
        self._written()
        lift = result.lift[0] if result.lift else None
        await self.note(persona_id, "canary", f"canary {candidate.id} ({candidate.proposer}) live for {share:.0%} of "
                        f"conversations of v{persona.version} (gate lift {lift:+.3f})" if lift is not None else
                        f"canary {candidate.id} live", candidate=candidate.id, fraction=share, file=str(path),
                        approve=experiment.approve, diff=result.diff)
        return experiment

    # -- check and act ------------------------------------------------------------------------

    async def check(self, persona_id: str, *, apply: bool, now: float | None = None) -> Decision:
        """The experiment's decision now; with `apply`, act on it (promote, roll back, wait)."""
        experiment = await self.store.experiment(persona_id)
        if experiment is None:
            raise ExperimentError(f"{persona_id} has no experiment running")
        arms = await collect(self.log, experiment, scan_limit=self.policy.scan_limit)
        decision = decide(arms, experiment, now)
        if not apply:
            return decision
        async with self.store.lock(persona_id):
            current = await self.store.experiment(persona_id)
            if current is None or current.canary != experiment.canary:
                return decision  # another process finished it meanwhile
            current.last = decision.to_dict()
            await self._act(current, decision)
        return decision

    async def _act(self, experiment: Experiment, decision: Decision) -> None:
        pid = experiment.persona_id
        if decision.action in ("rollback", "inconclusive"):
            await self._end(experiment, "rolled back" if decision.action == "rollback" else "inconclusive",
                            decision.reason, decision.to_dict())
        elif decision.action == "promote":
            await self._promote(experiment, decision.reason, decision.to_dict(), by="automatic decision")
        elif decision.action == "await_approval" and experiment.status != "awaiting_approval":
            experiment.status = "awaiting_approval"
            await self.store.save_experiment(experiment)
            await self.note(pid, "awaiting_approval", f"{decision.reason}; waiting for `python -m bot refine promote "
                            f"{pid}` (approval mode)", **decision.to_dict())
        else:
            await self.store.save_experiment(experiment)

    async def promote(self, persona_id: str, *, force: bool = False) -> Persona:
        """A person's promotion: confirms an approval-mode decision (or, with `force`, any canary)."""
        async with self.store.lock(persona_id):
            experiment = await self.store.experiment(persona_id)
            if experiment is None:
                raise ExperimentError(f"{persona_id} has no experiment running")
            if experiment.status != "awaiting_approval" and not force:
                last = experiment.last.get("reason", "not checked yet")
                raise ExperimentError(f"{persona_id}'s canary has not won yet ({last}); wait, or use --force to "
                                      "promote it anyway")
            return await self._promote(experiment, "promoted by a person", experiment.last, by="a person")

    async def rollback(self, persona_id: str, reason: str = "rolled back by a person") -> None:
        async with self.store.lock(persona_id):
            experiment = await self.store.experiment(persona_id)
            if experiment is None:
                raise ExperimentError(f"{persona_id} has no experiment running")
            await self._end(experiment, "rolled back", reason, experiment.last)

    async def _promote(self, experiment: Experiment, reason: str, numbers: dict[str, object], *, by: str) -> Persona:
        pid, path = experiment.persona_id, Path(experiment.persona_file)
        old, new = experiment.parent_version, next_version(experiment.parent_version)
        note = (f"v{old} -> v{new}: refine canary {experiment.canary} ({experiment.candidate.get('proposer')}) "
                f"promoted by {by} on {_day(time.time())}")
        try:
            persona, old_text = promote_canary(path, experiment.canary, experiment.added_control, note=note)
        except ExperimentError as exc:  # the canary is gone from the file: nothing to promote
            await self._abandon(experiment, str(exc))
            raise
        kept = self.data_dir / "refine" / pid / "versions" / f"v{experiment.parent_version}.yaml"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(old_text, encoding="utf-8")
        await self.store.end_experiment(pid)
        self._written()
        await self.note(pid, "promoted", f"canary {experiment.canary} promoted to v{persona.version} by {by}: "
                        f"{reason}", version=persona.version, previous=experiment.parent_version,
                        previous_file=str(kept), **numbers)
        await self._outcome(pid, experiment.canary, "promoted")
        return persona

    async def _end(self, experiment: Experiment, outcome: str, reason: str, numbers: dict[str, object]) -> None:
        pid = experiment.persona_id
        try:
            remove_canary(Path(experiment.persona_file), experiment.canary, experiment.added_control)
        except ExperimentError as exc:
            await self._abandon(experiment, str(exc))
            return
        await self.store.end_experiment(pid)
        self._written()
        kind = "rolled_back" if outcome == "rolled back" else outcome
        await self.note(pid, kind, f"canary {experiment.canary} {outcome}: {reason}", **numbers)
        await self._outcome(pid, experiment.canary, outcome)

    async def _abandon(self, experiment: Experiment, why: str) -> None:
        await self.store.end_experiment(experiment.persona_id)
        await self.note(experiment.persona_id, "abandoned", f"experiment {experiment.canary} ended without a change: "
                        f"{why}")

    async def _outcome(self, persona_id: str, candidate: str, outcome: str) -> None:
        try:
            await self.store.set_outcome(persona_id, candidate, outcome)
        except BotError:  # the history is advisory: a failed update must not undo the decision
            log.warning("could not record the outcome of %s", candidate)
