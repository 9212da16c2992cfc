"""The offline half of the loop: dataset -> candidates -> gate, with a workspace on disk.

Each step journals what it did and writes its result under `data_dir/refine/<persona>/`
(dataset.json, candidates.json, gate.json, gate.html), so the CLI's steps can run one at a time
(`refine dataset`, `refine propose`, `refine evaluate`, `refine canary`) or all at once (`refine run`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bot.domain.persona import Persona
from bot.evals import load_suite
from bot.ports import FeedbackLog, ModelProvider
from bot.refine.candidates import Candidate
from bot.refine.dataset import Dataset, build_dataset
from bot.refine.errors import NotEnoughData, RefineError
from bot.refine.evaluation import JudgeFor, Scorer
from bot.refine.gate import GateReport, run_gate
from bot.refine.manager import PersonaSource
from bot.refine.proposers import Attempt, Proposer
from bot.refine.store import JournalEntry, RefineStore
from bot.settings import RefineSettings


class Workspace:
    """Files of one persona's refinement steps."""

    def __init__(self, data_dir: Path, persona_id: str) -> None:
        self.dir = data_dir / "refine" / persona_id

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, text: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        path.write_text(text, encoding="utf-8")
        return path

    def read(self, name: str, step: str) -> str:
        path = self.path(name)
        if not path.is_file():
            raise RefineError(f"no {path}: run `python -m bot refine {step}` first")
        return path.read_text(encoding="utf-8")

    def dataset(self) -> Dataset:
        return Dataset.from_json(self.read("dataset.json", "dataset PERSONA"))

    def candidates(self) -> list[Candidate]:
        return [Candidate.from_dict(c) for c in json.loads(self.read("candidates.json", "propose PERSONA"))]

    def save_candidates(self, candidates: Sequence[Candidate]) -> Path:
        return self.write("candidates.json", json.dumps([c.to_dict() for c in candidates], ensure_ascii=False,
                                                        indent=1))


class Refiner:
    def __init__(self, log: FeedbackLog, personas: PersonaSource, store: RefineStore, models: ModelProvider,
                 scorer: Scorer, judge_for: JudgeFor, settings: RefineSettings, *, personas_dir: Path,
                 data_dir: Path) -> None:
        self.log = log
        self.personas = personas
        self.store = store
        self.models = models
        self.scorer = scorer
        self.judge_for = judge_for
        self.settings = settings
        self.personas_dir = personas_dir
        self.data_dir = data_dir

    def workspace(self, persona_id: str) -> Workspace:
        return Workspace(self.data_dir, persona_id)

    async def dataset(self, persona_id: str) -> Dataset:
        persona = self.personas.get(persona_id)
        suite = load_suite(self.personas_dir, persona_id, self.personas.source(persona_id))
        dataset = await build_dataset(self.log, persona, cases=suite.cases,
                                      validation_fraction=self.settings.validation_fraction,
                                      scan_limit=self.settings.scan_limit)
        if len(dataset.items) < self.settings.min_rated:
            raise NotEnoughData(f"{persona_id} v{persona.version} has {len(dataset.items)} rated replies; refine needs "
                                f"at least {self.settings.min_rated} (BOT_REFINE__MIN_RATED)", needed="rated replies")
        if not dataset.validation:
            raise NotEnoughData(f"{persona_id} v{persona.version}: rated replies from at least two conversations are "
                                "needed (one to learn from, one to validate on)", needed="conversations")
        self.workspace(persona_id).write("dataset.json", dataset.to_json())
        s = dataset.summary()
        await self.store.journal(JournalEntry(persona_id, "dataset", (
            f"dataset {dataset.fingerprint} of v{persona.version}: {s['train']['replies']} train / "
            f"{s['validation']['replies']} validation replies, {len(dataset.cases)} test cases"), s))
        return dataset

    async def propose(self, persona_id: str, dataset: Dataset, proposers: Sequence[Proposer]) -> list[Candidate]:
        persona = self._current(persona_id, dataset)
        history = await self.store.attempts(persona_id)
        candidates: list[Candidate] = []
        for proposer in proposers:
            candidates += await proposer.propose(persona, dataset, history)
        unique = list({c.id: c for c in candidates}.values())
        self.workspace(persona_id).save_candidates(unique)
        await self.store.journal(JournalEntry(persona_id, "proposed", (
            f"{len(unique)} candidate(s) from {', '.join(p.name for p in proposers)} on dataset {dataset.fingerprint}"),
            {"candidates": [c.to_dict() for c in unique]}))
        return unique

    async def evaluate(self, persona_id: str, dataset: Dataset, candidates: Sequence[Candidate]) -> GateReport:
        persona = self._current(persona_id, dataset)
        if not candidates:
            raise RefineError(f"no candidates to evaluate for {persona_id}")
        stale = [c.id for c in candidates if c.parent_version != persona.version]
        if stale:
            raise RefineError(f"candidates {', '.join(stale)} were made for another version of {persona_id}")
        report = await run_gate(dataset, persona, candidates, scorer=self.scorer, models=self.models,
                                suite_judge=self.judge_for, min_lift=self.settings.min_lift,
                                max_items=self.settings.max_eval_items)
        ws = self.workspace(persona_id)
        ws.write("gate.json", report.to_json())
        ws.write("gate.html", gate_page(report))
        for result in report.candidates:
            candidate = next(c for c in candidates if c.id == result.name)
            await self.store.add_attempt(persona_id, Attempt(
                candidate.id, candidate.proposer, candidate.parent_version, candidate.change.system_prompt,
                None if candidate.change.examples is None else len(candidate.change.examples),
                None if result.lift is None else round(result.lift[0], 4), result.passed, at=report.created_at))
        numbers = {r.name: {"lift": r.lift, "passed": r.passed, "reasons": r.reasons} for r in report.candidates}
        await self.store.journal(JournalEntry(persona_id, "gate", (
            f"gate on {len(report.current.validation.items)} validation replies: "
            + (f"{report.winner} wins" if report.winner else "no candidate passed")),
            {"winner": report.winner, "current": report.current.validation.summary(), "candidates": numbers}))
        return report

    def _current(self, persona_id: str, dataset: Dataset) -> Persona:
        persona = self.personas.get(persona_id)
        if dataset.version != persona.version:
            raise RefineError(f"the dataset is of {persona_id} v{dataset.version}, the persona is now "
                              f"v{persona.version}: build the dataset again")
        return persona


def gate_page(report: GateReport) -> str:
    """The gate report as a self-contained HTML page (same style as the feedback report)."""
    from bot.feedback.report import page

    return page(f"Refine gate: {report.persona_id}", report.render_html())


def latest_gate_html(data_dir: Path, persona_ids: Sequence[str]) -> str:
    """The newest gate report of each persona (from its workspace) as HTML sections, for the
    feedback report's page."""
    parts = []
    for pid in persona_ids:
        path = Workspace(data_dir, pid).path("gate.json")
        if path.is_file():
            try:
                parts.append(GateReport.from_dict(json.loads(path.read_text(encoding="utf-8"))).render_html())
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable old report is no reason to fail the feedback report
    return "".join(parts)
