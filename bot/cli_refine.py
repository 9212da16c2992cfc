"""`python -m bot refine ...`: the closed refinement loop from the command line.

Mounted by bot.cli: `app.add_typer(refine_app, name="refine")`.

    refine run PERSONA          dataset -> propose -> evaluate -> canary, in one go
    refine dataset PERSONA      rated replies of the current version, split by conversation
    refine propose PERSONA      candidates from proposers (--proposer few-shot|rewrite|soft-prompt|lora)
    refine evaluate PERSONA     the offline gate (table, --json, --html)
    refine canary PERSONA       the gate's winner goes live as a weighted variant in the persona file
    refine status [PERSONA]     experiments and journal; --apply acts on decisions (for cron)
    refine promote PERSONA      confirm a winning canary (approval mode) or --force one
    refine rollback PERSONA     take the canary out
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli_common import check_output, run_async, settings, write_text

if TYPE_CHECKING:
    from bot.settings import Settings

refine_app = typer.Typer(no_args_is_help=True, help="Refine a persona from its ratings: propose, gate, canary, decide.")

PROPOSERS = ("few-shot", "rewrite", "soft-prompt", "lora")
PersonaArg = Annotated[str, typer.Argument(help="Persona id.")]
ProposerOpt = Annotated[
    list[str] | None, typer.Option("--proposer", "-p", help=f"Repeatable: {', '.join(PROPOSERS)} (default: few-shot).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ApproveOpt = Annotated[bool | None, typer.Option("--approve/--auto", help="Wait for `refine promote` (default: "
                                                                          "BOT_REFINE__APPROVE).")]
FractionOpt = Annotated[float | None, typer.Option("--fraction", min=0.001, max=0.5, help="Canary share of "
                                                   "conversations (default: BOT_REFINE__CANARY_FRACTION).")]


@dataclass
class Env:
    cfg: Settings
    registry: Any
    log: Any
    store: Any
    manager: Any
    provider: Any = None
    refiner: Any = None


@asynccontextmanager
async def _env(cfg: Settings, *, models: bool) -> AsyncIterator[Env]:
    from bot.app import open_stores
    from bot.personas.registry import FilePersonaRegistry
    from bot.refine.manager import ExperimentManager
    from bot.refine.watcher import policy_of

    registry = FilePersonaRegistry(cfg.personas_dir, adapters_root=cfg.adapters_dir)
    registry.reload()
    async with open_stores(cfg) as stores:
        log, store = stores.feedback, stores.refine
        manager = ExperimentManager(store, log, registry, policy_of(cfg.refine), cfg.data_dir)
        env = Env(cfg, registry, log, store, manager)
        if not models:
            yield env
            return
        from bot.models.provider import DefaultModelProvider

        env.provider = DefaultModelProvider(cfg.model, cfg.data_dir)
        try:
            env.refiner = build_refiner(cfg, registry, log, store, env.provider)
            yield env
        finally:
            env.provider.close()


def build_refiner(cfg: Settings, registry: Any, log: Any, store: Any, provider: Any) -> Any:
    from bot.refine.evaluation import Replayer, Scorer
    from bot.refine.models import judge_for
    from bot.refine.pipeline import Refiner

    judge = judge_for(cfg.refine, provider)
    scorer = Scorer(Replayer(provider, cfg.memory), judge)
    return Refiner(log, registry, store, provider, scorer, judge, cfg.refine, personas_dir=cfg.personas_dir,
                   data_dir=cfg.data_dir)


def make_proposers(names: list[str], env: Env, persona_id: str) -> list[Any]:
    from bot.refine.models import optimizer_model
    from bot.refine.proposers.fewshot import FewShotProposer
    from bot.refine.proposers.rewrite import RewriteProposer

    cfg = env.cfg.refine
    out: list[Any] = []
    for name in names or ["few-shot"]:
        if name == "few-shot":
            out.append(FewShotProposer(env.refiner.scorer, max_examples=cfg.fewshot_max_examples,
                                       max_evaluations=cfg.fewshot_evaluations))
        elif name == "rewrite":
            model, label = optimizer_model(cfg, env.provider)
            out.append(RewriteProposer(model, candidates=cfg.rewrite_candidates, max_prompt_chars=cfg.max_prompt_chars,
                                       failures=_suite_failures(env, persona_id), label=label))
        elif name in ("soft-prompt", "lora"):
            from bot.models.local_loader import load_local_model
            from bot.refine.proposers.adapter import AdapterProposer

            out.append(AdapterProposer(lambda: load_local_model(env.cfg.model, env.cfg.data_dir), env.cfg.adapters_dir,
                                       kind="lora" if name == "lora" else "soft-prompt"))
        else:
            raise typer.BadParameter(f"choose from {', '.join(PROPOSERS)}", param_hint="--proposer")
    return out


def _suite_failures(env: Env, persona_id: str) -> Callable[[], Any]:
    async def failures() -> list[str]:
        from bot.evals import EvalTarget, ModelResponder, load_suite, run_evals

        persona = env.registry.get(persona_id)
        suite = load_suite(env.cfg.personas_dir, persona_id, env.registry.source(persona_id))
        if not suite.cases:
            return []
        judge = env.refiner.judge_for
        results = await run_evals([EvalTarget(persona, "current", suite.cases)], ModelResponder(env.provider),
                                  judge_for=judge)
        return [f"{r.case}: " + "; ".join(f"{c.kind}: {c.detail}" for c in r.checks if not c.passed)
                for r in results.runs if not r.passed]

    return failures


def _run(make: Callable[[Settings], Any], persona: str | None = None) -> Any:
    """Run a step; an unknown persona fails in one line before Redis or a model is touched."""
    cfg = settings()
    if persona is not None:
        from bot.cli import require_persona

        require_persona(cfg, persona)
    return run_async(make(cfg))


def _echo(text: str) -> None:
    typer.echo(text)


# -- the steps ------------------------------------------------------------------------------------


@refine_app.command("dataset")
def dataset_command(persona: PersonaArg, as_json: JsonOpt = False) -> None:
    """Build the replay dataset from the persona's rated replies (current version)."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=True) as env:
            return await env.refiner.dataset(persona)

    data = _run(main, persona)
    _echo(json.dumps(data.summary(), indent=1) if as_json else _dataset_text(data))


def _dataset_text(data: Any) -> str:
    s = data.summary()
    lines = [f"{s['persona']} v{s['version']}: dataset {s['fingerprint']}, {s['test_cases']} test cases"]
    for split in ("train", "validation"):
        c = s[split]
        lines.append(f"  {split:10} {c['replies']:4} replies in {c['conversations']} conversations: "
                     f"{c['ups']} up, {c['downs']} down, {c['conflicting']} conflicting, "
                     f"{c['with_next_message']} with the user's next message")
    return "\n".join(lines + [f"  note: {n}" for n in data.notes])


@refine_app.command("propose")
def propose_command(persona: PersonaArg, proposer: ProposerOpt = None, as_json: JsonOpt = False) -> None:
    """Propose candidates from the saved dataset (run `refine dataset` first)."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=True) as env:
            data = env.refiner.workspace(persona).dataset()
            await env.provider.warm_up([env.registry.get(persona)])
            candidates = await env.refiner.propose(persona, data, make_proposers(proposer or [], env, persona))
            return candidates, env.registry.get(persona)

    candidates, current = _run(main, persona)
    if as_json:
        _echo(json.dumps([c.to_dict() for c in candidates], ensure_ascii=False, indent=1))
        return
    if not candidates:
        _echo("no candidates: the proposers found nothing better to try (see the journal: refine status)")
    for c in candidates:
        _echo(f"{c.id} ({c.proposer}): {c.notes}\n{c.diff(current)}")


@refine_app.command("evaluate")
def evaluate_command(
    persona: PersonaArg,
    as_json: JsonOpt = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the gate as an HTML page.")] = None,
) -> None:
    """Run the offline gate on the saved candidates: test suite + validation replay, vs the current version."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=True) as env:
            ws = env.refiner.workspace(persona)
            await env.provider.warm_up([env.registry.get(persona)])
            return await env.refiner.evaluate(persona, ws.dataset(), ws.candidates())

    check_output(html, "--html")
    report = _run(main, persona)
    _echo(report.to_json() if as_json else report.render_text())
    if html is not None:
        from bot.refine.pipeline import gate_page

        write_text(html, gate_page(report))
        typer.echo(f"wrote {html}", err=True)


@refine_app.command("canary")
def canary_command(
    persona: PersonaArg,
    candidate: Annotated[str | None, typer.Option("--candidate", help="Candidate id (default: the gate's winner).")]
    = None,
    fraction: FractionOpt = None,
    approve: ApproveOpt = None,
) -> None:
    """Put the gate's winner live as a canary variant in the persona file."""

    async def main(cfg: Settings) -> Any:
        from bot.refine.errors import GateRejected
        from bot.refine.gate import GateReport
        from bot.refine.pipeline import Workspace

        ws = Workspace(cfg.data_dir, persona)
        report = GateReport.from_dict(json.loads(ws.read("gate.json", "evaluate PERSONA")))
        chosen = candidate or report.winner
        if chosen is None:
            raise GateRejected(f"no candidate of {persona} passed the gate: nothing to put live")
        found = next((c for c in ws.candidates() if c.id == chosen), None)
        if found is None:
            raise GateRejected(f"no candidate {chosen} in {ws.path('candidates.json')}")
        async with _env(cfg, models=False) as env:
            return await env.manager.start(persona, report, found, fraction=fraction, approve=approve)

    experiment = _run(main, persona)
    _echo(f"canary {experiment.canary} is live for {experiment.fraction:.0%} of {persona}'s conversations "
          f"({experiment.persona_file}); the running bot decides (or: refine status {persona} --apply)")


@refine_app.command("run")
def run_command(
    persona: PersonaArg,
    proposer: ProposerOpt = None,
    canary: Annotated[bool, typer.Option("--canary/--no-canary", help="Put the winner live.")] = True,
    fraction: FractionOpt = None,
    approve: ApproveOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One shot: dataset -> propose -> evaluate -> canary (the winner, if any candidate passes)."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=True) as env:
            await env.provider.warm_up([env.registry.get(persona)])
            data = await env.refiner.dataset(persona)
            candidates = await env.refiner.propose(persona, data, make_proposers(proposer or [], env, persona))
            if not candidates:
                return None, None
            report = await env.refiner.evaluate(persona, data, candidates)
            experiment = None
            if canary and report.winner:
                winner = next(c for c in candidates if c.id == report.winner)
                experiment = await env.manager.start(persona, report, winner, fraction=fraction, approve=approve)
            return report, experiment

    report, experiment = _run(main, persona)
    if report is None:
        _echo("no candidates: nothing to evaluate")
        return
    _echo(report.to_json() if as_json else report.render_text())
    if experiment is not None:
        _echo(f"canary {experiment.canary} is live for {experiment.fraction:.0%} of {persona}'s conversations")


# -- the experiment -------------------------------------------------------------------------------


@refine_app.command("status")
def status_command(
    persona: Annotated[str | None, typer.Argument(help="Persona id (default: every persona with refine activity).")]
    = None,
    apply: Annotated[bool, typer.Option("--apply", help="Act on the decisions (promote / roll back): for cron.")]
    = False,
    entries: Annotated[int, typer.Option("--journal", min=0, help="Journal entries shown per persona.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Running experiments with their sequential decision, and the journal."""

    async def main(cfg: Settings) -> Any:
        from bot.refine.errors import ExperimentError

        async with _env(cfg, models=False) as env:
            out = []
            for pid in [persona] if persona else await env.store.personas():
                experiment = await env.store.experiment(pid)
                decision = None
                if experiment is not None:
                    try:
                        decision = await env.manager.check(pid, apply=apply)
                    except ExperimentError as exc:
                        decision = str(exc)
                out.append((pid, experiment, decision, await env.store.entries(pid, entries)))
            return out

    rows = _run(main)
    if as_json:
        _echo(json.dumps([{"persona": pid, "experiment": e.to_dict() if e else None,
                           "decision": d.to_dict() if hasattr(d, "to_dict") else d,
                           "journal": [vars(x) for x in j]} for pid, e, d, j in rows], ensure_ascii=False,
                         indent=1, default=str))
        return
    if not rows:
        _echo("no refinement activity yet: python -m bot refine run PERSONA")
    for pid, experiment, decision, journal in rows:
        _echo(_status_text(pid, experiment, decision, journal, apply))


def _status_text(pid: str, experiment: Any, decision: Any, journal: list[Any], applied: bool) -> str:
    from datetime import UTC, datetime

    lines = [f"== {pid}"]
    if experiment is None:
        lines.append("no experiment running")
    else:
        lines.append(f"canary {experiment.canary} ({experiment.candidate.get('proposer')}) on "
                     f"{experiment.fraction:.0%} of v{experiment.parent_version}, status {experiment.status}")
        if isinstance(decision, str):
            lines.append(decision)
        elif decision is not None:
            verb = "done" if applied and decision.action != "continue" else "decision"
            lines.append(f"{verb}: {decision.action}: {decision.reason}")
    for entry in journal:
        when = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%d %H:%M")
        lines.append(f"  {when} {entry.kind:17} {entry.summary}")
    return "\n".join(lines)


@refine_app.command("promote")
def promote_command(
    persona: PersonaArg,
    force: Annotated[bool, typer.Option("--force", help="Promote even before the canary has won.")] = False,
) -> None:
    """Make the canary the persona's next version (the old version is kept under BOT_DATA_DIR/refine)."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=False) as env:
            return await env.manager.promote(persona, force=force)

    promoted = _run(main)
    _echo(f"{persona} is now v{promoted.version}")


@refine_app.command("rollback")
def rollback_command(
    persona: PersonaArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (journaled).")] = "rolled back by a person",
) -> None:
    """Take the canary out of the persona file; the current version stays."""

    async def main(cfg: Settings) -> Any:
        async with _env(cfg, models=False) as env:
            await env.manager.rollback(persona, reason)

    _run(main)
    _echo(f"{persona}: canary removed")
