"""`bot feedback report` and `bot feedback export --format` against a real Redis."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from bot.cli_feedback import feedback_app
from bot.domain.feedback import Rating
from bot.feedback.redis_log import RedisFeedbackLog
from bot.redis_conn import RedisHandle
from bot.settings import RedisSettings
from tests.test_report import record

PREFIX = "clitest"


async def _seed(url: str) -> None:
    handle = await RedisHandle.connect(url, RedisSettings(key_prefix=PREFIX))
    log = RedisFeedbackLog(handle)
    try:
        votes = {"control": [1, 1, -1, 1], "short": [1, -1, -1, -1]}
        for variant, values in votes.items():
            for i, value in enumerate(values):
                rid = f"{variant}{i}"
                await log.record(record(rid, variant, "2024-05-0" + str(1 + i), reply=f"reply {i}"))
                await log.rate(Rating(rid, f"user{i}", value))  # type: ignore[arg-type]
    finally:
        await handle.aclose()


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str | None]:
    asyncio.run(_seed(redis_url))
    return {"BOT_REDIS__URL": redis_url, "BOT_REDIS__KEY_PREFIX": PREFIX, "BOT_DATA_DIR": str(tmp_path / "data")}


def invoke(env: dict[str, str | None], *args: str) -> Result:
    app = typer.Typer()
    app.add_typer(feedback_app, name="feedback")
    return CliRunner(env=env).invoke(app, ["feedback", *args])


def test_report_table_comparison_and_html(env: dict[str, str | None], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = invoke(env, "report", "--html", str(page))
    assert result.exit_code == 0, result.stderr
    assert re.search(r"captain\s+1\s+control\s+4\s+4\s+75\.0%", result.stdout), result.stdout
    assert re.search(r"captain\s+1\s+short\s+4\s+4\s+25\.0%", result.stdout)
    assert "control is ahead of short by 50.0%" in result.stdout and "not significant yet" in result.stdout
    assert "<svg" in page.read_text() and str(page) in result.stderr


def test_report_json_since_and_persona(env: dict[str, str | None]) -> None:
    data = json.loads(invoke(env, "report", "--json", "--since", "2024-05-03").stdout)
    assert [(g["variant"], g["ratings"], g["ups"]) for g in data["groups"]] == [("control", 2, 1), ("short", 2, 0)]
    assert json.loads(invoke(env, "report", "--json", "--persona", "nobody").stdout)["groups"] == []
    bad = invoke(env, "report", "--since", "someday")
    assert bad.exit_code == 2 and "not a date" in bad.stderr
