"""`python -m bot train soft-prompt|lora`: train a persona's adapter on the CPU.

Mounted by bot.cli: `app.add_typer(train_app, name="train")`.

    python -m bot train soft-prompt --persona captain-soft --out adapters/captain-soft \\
        --data training_data/captain.jsonl
    python -m bot train lora --persona captain-lora --out adapters/captain-lora \\
        --data training_data/captain.jsonl --rank 8
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from bot.cli_common import EXIT_USAGE, fail, run_async, settings

if TYPE_CHECKING:  # the training stack (torch, transformers, peft) is imported when a command runs
    from bot.domain.persona import Persona
    from bot.settings import Settings
    from bot.training.data import ChatExample, DataSource
    from bot.training.loop import LoopOptions
    from bot.training.methods import LoraOptions, SoftPromptOptions
    from bot.training.run import Progress as TrainProgress
    from bot.training.run import TrainResult

train_app = typer.Typer(no_args_is_help=True, help="Train soft prompts and LoRA adapters for a persona (CPU).")
out_console = Console()

PersonaOpt = Annotated[str, typer.Option("--persona", "-p", help="Persona id: its system prompt, model, examples.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Adapter directory to write, e.g. adapters/NAME.")]
DataOpt = Annotated[list[Path] | None, typer.Option("--data", help="JSONL chats ({'messages': [...]}); repeatable.")]
FeedbackOpt = Annotated[bool, typer.Option("--from-feedback", help="Add the persona's 👍-majority replies (Redis).")]
ExamplesOpt = Annotated[bool, typer.Option("--examples/--no-examples", help="Add the persona's few-shot examples.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training split.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Chats per optimizer step.")]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.")]
HoldoutOpt = Annotated[float, typer.Option("--holdout", min=0.0, max=0.9, help="Fraction held out to measure.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split, shuffling and init.")]
LengthOpt = Annotated[int, typer.Option("--max-length", min=32, help="Tokens per chat (older turns cut).")]


@train_app.command("soft-prompt")
def soft_prompt(
    persona: PersonaOpt,
    out: OutOpt,
    data: DataOpt = None,
    from_feedback: FeedbackOpt = False,
    examples: ExamplesOpt = True,
    virtual_tokens: Annotated[int, typer.Option("--virtual-tokens", min=1, max=512, help="Soft prompt length.")] = 16,
    init_text: Annotated[
        str | None, typer.Option("--init-text", help="Initialise from this text (default: the persona's prompt).")
    ] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random instead of text init.")] = False,
    epochs: EpochsOpt = 3,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = 3e-2,
    batch_size: BatchOpt = 8,
    max_steps: StepsOpt = None,
    holdout: HoldoutOpt = 0.15,
    seed: SeedOpt = 0,
    max_length: LengthOpt = 384,
) -> None:
    """Train a soft prompt (PEFT prompt tuning): a few learned virtual tokens before the prompt."""
    from bot.training.loop import LoopOptions
    from bot.training.methods import SoftPromptOptions

    def method(system_prompt: str) -> SoftPromptOptions:
        return SoftPromptOptions(virtual_tokens, None if random_init else (init_text or system_prompt))

    _train(
        persona,
        out,
        data or [],
        from_feedback,
        examples,
        method,
        LoopOptions(epochs, lr, batch_size, max_steps, seed, max_length),
        holdout,
    )


@train_app.command("lora")
def lora(
    persona: PersonaOpt,
    out: OutOpt,
    data: DataOpt = None,
    from_feedback: FeedbackOpt = False,
    examples: ExamplesOpt = True,
    rank: Annotated[int, typer.Option("--rank", "-r", min=1, max=256, help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option("--alpha", min=1, help="LoRA alpha (scale = alpha / rank).")] = 16,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.9, help="LoRA dropout.")] = 0.05,
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated Linear layer names.")] = "q_proj,v_proj",
    epochs: EpochsOpt = 3,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = 2e-3,
    batch_size: BatchOpt = 8,
    max_steps: StepsOpt = None,
    holdout: HoldoutOpt = 0.15,
    seed: SeedOpt = 0,
    max_length: LengthOpt = 384,
) -> None:
    """Train a LoRA adapter: low-rank updates to the attention layers."""
    from bot.training.loop import LoopOptions
    from bot.training.methods import LoraOptions
    layers = tuple(t.strip() for t in targets.split(",") if t.strip())

    def method(system_prompt: str) -> LoraOptions:
        return LoraOptions(rank, alpha, dropout, layers)

    _train(
        persona,
        out,
        data or [],
        from_feedback,
        examples,
        method,
        LoopOptions(epochs, lr, batch_size, max_steps, seed, max_length),
        holdout,
    )


def _train(
    persona_id: str,
    out: Path,
    files: list[Path],
    from_feedback: bool,
    use_examples: bool,
    method: Callable[[str], SoftPromptOptions | LoraOptions],
    loop: LoopOptions,
    holdout: float,
) -> None:
    from bot.training.data import training_system_prompt
    from bot.training.run import TrainingData, train_adapter

    cfg = settings()
    _check_out_dir(out)

    async def main() -> TrainResult:
        from bot.models.local_loader import load_local_model

        persona = find_persona(cfg, persona_id)
        examples, sources = await gather_data(cfg, persona, files, from_feedback, use_examples)
        data = TrainingData(examples, sources, holdout, loop.seed)
        _show_data(sources)
        loaded = load_local_model(cfg.model, cfg.data_dir)
        options = method(training_system_prompt(persona))
        # Training is CPU-bound and nothing else runs on this loop: block it (Ctrl-C stops at once).
        with _progress() as callbacks:
            return train_adapter(loaded, persona, data, options, loop, out, command=_command(), progress=callbacks)

    _show_result(run_async(main()))


def _check_out_dir(out: Path) -> None:
    """Before any loading: --out must be a directory we can create or write into (else exit 2)."""
    if out.exists() and not out.is_dir():
        fail(f"cannot write --out {out}: it is a file, not a directory", EXIT_USAGE)
    nearest = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    try:  # a real attempt: permissions, read-only and special file systems all show here
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=nearest))
    except OSError as exc:
        fail(f"cannot write --out {out}: {exc.strerror or exc} in {nearest}", EXIT_USAGE)


def find_persona(cfg: Settings, persona_id: str) -> Persona:
    from bot.errors import PersonaNotFound
    from bot.personas.loader import load_directory
    from bot.training.errors import TrainingError

    result = load_directory(cfg.personas_dir)
    persona = result.personas.get(persona_id)
    if persona is None and result.errors:  # perhaps its file is the broken one: say which files are
        broken = "; ".join(str(e) for e in result.errors)
        raise TrainingError(f"no persona {persona_id!r} loaded; broken persona files: {broken}")
    if persona is None:
        raise PersonaNotFound(persona_id, list(result.personas))
    backend = persona.model.backend or cfg.model.backend
    if backend != "local":
        raise TrainingError(f"persona {persona_id!r} uses the {backend} backend; adapters train on the local model")
    return persona


async def gather_data(
    cfg: Settings, persona: Persona, files: list[Path], from_feedback: bool, use_examples: bool
) -> tuple[list[ChatExample], list[DataSource]]:
    from bot.training.data import feedback_examples, load_jsonl, persona_examples
    from bot.training.errors import TrainingError

    examples: list[ChatExample] = []
    sources: list[DataSource] = []
    found = [load_jsonl(path) for path in files]
    if use_examples and persona.examples:
        found.append(persona_examples(persona))
    if from_feedback:
        from bot.app import open_stores

        async with open_stores(cfg) as stores:
            found.append(await feedback_examples(stores.feedback, persona.id))
    for chats, source in found:
        examples += chats
        sources.append(source)
    if not examples:
        raise TrainingError(
            f"no training data for {persona.id!r}: pass --data FILE.jsonl, --from-feedback (needs rated replies) "
            "or give the persona few-shot examples"
        )
    return examples, sources


def _command() -> str:
    return "python -m bot " + shlex.join(sys.argv[1:])


def _show_data(sources: list[DataSource]) -> None:
    for s in sources:
        out_console.print(f"data: {s.name}: {s.examples} chats (sha256 {s.sha256[:12]}…)", highlight=False)


@contextmanager
def _progress() -> Iterator[TrainProgress]:
    """A rich progress bar fed by the training callbacks."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bot.training.run import Progress as TrainProgress
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out_console,
    )
    task = bar.add_task("preparing", total=None, loss="-")

    def start(total: int) -> None:
        bar.update(task, description="training", total=total, completed=0)

    def step(step: int, loss: float) -> None:
        bar.update(task, completed=step, loss=f"{loss:.3f}")
        total = bar.tasks[0].total or step
        if not out_console.is_terminal and (step % max(1, int(total) // 10) == 0 or step == total):
            # Redirected to a file: the live bar only draws at the end, so log every tenth.
            bar.console.print(f"step {step}/{total:.0f} loss {loss:.3f}", highlight=False)

    def phase(text: str) -> None:
        bar.update(task, description=text)
        if not out_console.is_terminal:
            bar.console.print(text, highlight=False)

    with bar:
        yield TrainProgress(start=start, step=step, phase=phase)


def _show_result(result: TrainResult) -> None:
    from rich.table import Table

    card = result.card
    loss = card["loss"]
    table = Table(
        title=f"{card['kind']} adapter for {card['persona']['id']}: {card['training']['steps']} steps, "
        f"{card['training']['seconds']:.0f} s"
    )
    for column in ("loss", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row(f"train ({loss['train_eval_examples']} chats)", _num(loss["train_before"]), _num(loss["train_after"]))
    table.add_row(
        f"held-out ({card['data']['held_out_examples']} chats)",
        _num(loss["held_out_before"]),
        _num(loss["held_out_after"]),
    )
    out_console.print(table)
    for warning in result.warnings:
        out_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    size = sum(f.stat().st_size for f in result.out.iterdir())
    out_console.print(f"saved {result.out} ({size / 1024:.0f} KiB)", highlight=False)
    out_console.print(f"use it in a persona file:  adapter: {result.out}", highlight=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
