"""CLI of the refinement loop: `feedback report`, `feedback export --format`, and `eval`.

Mounted by bot.cli:  app.add_typer(feedback_app, name="feedback");  app.command("eval")(eval_command)
Heavy modules (pydantic, redis, the models) are imported inside the commands: `--help` stays quick.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli_common import EXIT_USAGE, check_output, output_file, run_async, settings, write_text
from bot.domain.variants import DEFAULT_VARIANT
from bot.errors import ConfigError
from bot.feedback.export import FORMATS, ExportFormat, ExportOptions

if TYPE_CHECKING:
    from bot.domain.persona import Persona
    from bot.settings import Settings

feedback_app = typer.Typer(no_args_is_help=True, help="Ratings: reports and training exports.")

def _echo_err(text: str) -> None:
    typer.echo(text, err=True)


def _since(text: str | None) -> date | None:
    from bot.feedback.report import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None


@feedback_app.command("report")
def feedback_report(
    persona: Annotated[str | None, typer.Option("--persona", help="Only this persona.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Replies since YYYY-MM-DD, or 7d / 4w.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")] = None,
    sample: Annotated[int, typer.Option(help="Newest reply records read for the medians.", min=0)] = 20_000,
) -> None:
    """👍 rate with 95% intervals, latency and length per persona/version/variant; variant comparisons."""
    from bot.app import open_stores
    from bot.feedback.report import build_report, render_html

    cfg, start = settings(), _since(since)
    check_output(html, "--html")

    async def main() -> Any:
        async with open_stores(cfg) as stores:
            return await build_report(stores.feedback, persona_id=persona, since=start, sample=sample,
                                      refine=stores.refine)

    report = run_async(main())
    typer.echo(report.to_json() if as_json else report.render_text())
    if html is not None:
        from bot.refine.pipeline import latest_gate_html

        gates = latest_gate_html(cfg.data_dir, [r.persona for r in report.refine])
        write_text(html, render_html(report, gate_html=gates))
        _echo_err(f"wrote {html}")


@feedback_app.command("export")
def feedback_export(
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}.")] = "jsonl",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
    persona: Annotated[str | None, typer.Option("--persona", help="Only this persona.")] = None,
    min_ratings: Annotated[int, typer.Option("--min-ratings", help="Skip replies with fewer ratings.", min=1)] = 1,
    system_prompt: Annotated[bool, typer.Option(help="Keep the system prompt in prompts.")] = True,
    max_pairs: Annotated[int, typer.Option("--max-pairs", help="dpo: pairs per prompt at most.", min=1)] = 4,
) -> None:
    """Rated replies as JSONL, or as SFT / KTO / DPO training rows (TRL's conversational format)."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    from bot.app import open_stores
    from bot.feedback.export import export

    cfg = settings()
    check_output(out, "--out")
    options = ExportOptions(persona, min_ratings, system_prompt, max_pairs)

    async def main() -> Any:
        async with open_stores(cfg) as stores:
            log = stores.feedback
            if out is None:
                return await export(log, _as_format(fmt), sys.stdout, options)
            try:
                with output_file(out) as stream:  # written whole: a failed export leaves no partial file
                    return await export(log, _as_format(fmt), stream, options)
            except OSError as exc:
                raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None

    stats = run_async(main())
    where = f" to {out}" if out else ""
    _echo_err(f"exported {stats.written} {fmt} rows from {stats.rated} rated replies{where} ({stats.skipped} skipped)")


def _as_format(fmt: str) -> ExportFormat:
    for known in FORMATS:
        if known == fmt:
            return known
    raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")


# -- eval -----------------------------------------------------------------------------------------


def _variants_of(persona: Persona, wanted: list[str]) -> list[str]:
    """The variants to test: the ones asked for, else every variant the persona defines."""
    known = [v.id for v in persona.variants]
    if not wanted:
        return known or [DEFAULT_VARIANT]
    # "default" is always allowed: the persona as written, without any variant's overrides.
    unknown = [v for v in wanted if v not in known and v != DEFAULT_VARIANT]
    if unknown:
        choices = ", ".join(known) or DEFAULT_VARIANT
        _echo_err(f"error: persona {persona.id} has no variant {', '.join(unknown)} (it has: {choices})")
        raise typer.Exit(EXIT_USAGE)
    return wanted


def _targets(cfg: Settings, registry: Any, ids: list[str], variants: list[str], cases_file: Path | None) -> list[Any]:
    from bot.evals import EvalTarget, load_suite, load_suite_file

    personas = [registry.get(pid) for pid in ids] if ids else registry.all()
    targets = []
    for persona in personas:
        if cases_file is not None:
            suite = load_suite_file(cases_file, persona.id)
        else:
            suite = load_suite(cfg.personas_dir, persona.id, registry.source(persona.id))
        if not suite.cases:
            if ids:
                where = cfg.personas_dir / "tests" / f"{persona.id}.yaml"
                _echo_err(f"error: no test cases for {persona.id}: add `tests:` to its persona file or write {where}")
                raise typer.Exit(EXIT_USAGE)
            continue
        targets += [EvalTarget(persona.with_variant(v), v, suite.cases) for v in _variants_of(persona, variants)]
    if not targets:
        _echo_err(f"error: no persona in {cfg.personas_dir} declares test cases")
        raise typer.Exit(EXIT_USAGE)
    return targets


def _progress(run: Any) -> None:
    sys.stderr.write("." if run.passed else "F")
    sys.stderr.flush()


def eval_command(
    personas: Annotated[
        list[str] | None, typer.Argument(help="Persona ids (default: every persona with tests).")
    ] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Variant to test (repeatable).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", "-n", help="Runs per test case.", min=1)] = 1,
    threshold: Annotated[float, typer.Option(help="Minimum pass rate per persona/variant.", min=0.0, max=1.0)] = 0.8,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="JSON results file (default: BOT_DATA_DIR/evals/eval-TIME.json).")
    ] = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="Read the test cases from this file instead.")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="Persona whose model answers judge questions.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON results instead of tables.")] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-j", help="Replies generated at once (batched locally).", min=1)
    ] = 8,
) -> None:
    """Run persona test suites against the real backend: exit 1 when a pass rate is below the threshold,
    2 when the setup is broken (no cases, unknown persona or variant, a broken test file)."""
    from bot.errors import BotError
    from bot.evals import ModelResponder, bound_judge, run_evals
    from bot.models.provider import DefaultModelProvider
    from bot.personas.registry import FilePersonaRegistry

    cfg = settings()
    check_output(out, "--out")
    registry = FilePersonaRegistry(cfg.personas_dir, adapters_root=cfg.adapters_dir)
    registry.reload()
    try:
        targets = _targets(cfg, registry, personas or [], variant or [], cases)
        judge_persona = registry.get(judge) if judge else None
    except BotError as exc:  # unknown persona, broken test file: a setup problem, not a failed test
        _echo_err(f"error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    provider = DefaultModelProvider(cfg.model, cfg.data_dir)

    async def main() -> Any:
        responder, judge_for = ModelResponder(provider), bound_judge(provider, judge_persona)
        try:
            # Load the local model first, so the first case's latency is not the model load.
            await provider.warm_up([t.persona for t in targets] + ([judge_persona] if judge_persona else []))
            return await run_evals(targets, responder, judge_for=judge_for, repeat=repeat, on_run=_progress,
                                   concurrency=concurrency)
        finally:
            provider.close()
            _echo_err("")

    results = run_async(main())
    path = out or cfg.data_dir / "evals" / f"eval-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _echo_err(f"error: cannot create {path.parent}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    write_text(path, results.to_json(threshold))
    typer.echo(results.to_json(threshold) if as_json else results.render(threshold))
    _echo_err(f"results: {path}")
    if results.below(threshold):
        raise typer.Exit(1)
