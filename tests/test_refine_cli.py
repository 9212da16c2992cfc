"""`python -m bot refine ...` against a real Redis with the scripted backend."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from bot.app import build_runtime
from bot.cli_refine import refine_app
from bot.domain.messages import ChatRequest, Speaker
from bot.settings import Settings
from tests.test_refine_loop import PERSONA


async def _seed(settings: Settings) -> None:
    rng = random.Random(0)
    async with build_runtime(settings) as rt:
        for c in range(10):
            for t in range(2):
                reply = await rt.engine.reply(ChatRequest(f"c{c}", Speaker(f"u{c}", "Sam"), f"hello {t}",
                                                          persona_id="helper"))
                await rt.engine.rate(reply.reply_id, f"u{c}", rng.choice((1, -1)))


def invoke(env: dict[str, str | None], *args: str) -> Result:
    app = typer.Typer()
    app.add_typer(refine_app, name="refine")
    return CliRunner(env=env).invoke(app, ["refine", *args])


def test_dataset_status_and_refusals(settings: Settings, personas_dir: Path, redis_url: str) -> None:
    (personas_dir / "helper.yaml").write_text(PERSONA)
    asyncio.run(_seed(settings))
    env: dict[str, str | None] = {
        "BOT_REDIS__URL": redis_url, "BOT_REDIS__KEY_PREFIX": "test", "BOT_DATA_DIR": str(settings.data_dir),
        "BOT_PERSONAS_DIR": str(personas_dir), "BOT_MODEL__BACKEND": "scripted", "BOT_REFINE__JUDGE": "persona",
    }  # fmt: skip
    result = invoke(env, "dataset", "helper", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["train"]["replies"] + summary["validation"]["replies"] == 20
    assert summary["test_cases"] == 1
    assert (settings.data_dir / "refine" / "helper" / "dataset.json").is_file()

    status = invoke(env, "status", "helper")
    assert status.exit_code == 0 and "no experiment running" in status.stdout and "dataset" in status.stdout

    no_gate = invoke(env, "canary", "helper")
    assert no_gate.exit_code == 1 and "refine evaluate PERSONA" in no_gate.output
    assert invoke(env, "promote", "helper").exit_code == 1
    assert (personas_dir / "helper.yaml").read_text() == PERSONA

    # The scripted model judges nothing (no A/B verdict): few-shot finds no better examples.
    proposed = invoke(env, "propose", "helper", "-p", "few-shot")
    assert proposed.exit_code == 0, proposed.output
    assert "no candidates" in proposed.stdout
    assert invoke(env, "propose", "helper", "-p", "nonsense").exit_code == 2
