"""Settings: env vars with nesting, secrets never shown, and the README table kept in sync."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.settings import Settings, setting_rows

README = Path(__file__).resolve().parent.parent / "README.md"


def test_nested_env_vars_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_REDIS__URL", "redis://:pw@example:6379/0")
    monkeypatch.setenv("BOT_MEMORY__MAX_TURNS", "3")
    monkeypatch.setenv("BOT_DISCORD__TOKEN", "very-secret-token")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.memory.max_turns == 3
    assert s.redis.url is not None and s.redis.url.get_secret_value().endswith("/0")
    shown = repr(s) + str(s.model_dump())
    assert "very-secret-token" not in shown and "pw@" not in shown


def test_readme_lists_every_setting_with_its_default() -> None:
    block = re.search(r"<!-- settings:start -->(.*)<!-- settings:end -->", README.read_text(), re.S)
    assert block, "README lost its settings table markers"
    for env, default, _ in setting_rows():
        assert f"| `{env}` | `{default}` |" in block.group(1), f"{env} missing or stale: run scripts/readme_settings.py"
