"""The CLI as a user runs it: `python -m bot chat` with piped input and the embedded Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], data: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    environ.update(BOT_DATA_DIR=str(data), BOT_MODEL__BACKEND="scripted", **env)
    return subprocess.run([sys.executable, "-m", "bot", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=environ, timeout=120)


def test_chat_remembers_across_runs_and_ratings_export(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = run(["chat"], data, "my favourite colour is teal\n/good\n")
    assert first.returncode == 0, first.stderr
    assert "Ada> [Ada] You said: my favourite colour is teal" in first.stdout
    assert (data / "redis" / "appendonlydir").exists() or (data / "redis" / "appendonly.aof").exists()

    second = run(["chat"], data, "and now?\n")
    assert "continuing the earlier conversation" in second.stdout

    exported = run(["feedback", "export", "--out", str(tmp_path / "out.jsonl")], data)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["reply"] == "[Ada] You said: my favourite colour is teal"
    assert rows[0]["rating"] == 1 and rows[0]["persona_id"] == "assistant"
    assert rows[0]["messages"][-1] == {"role": "user", "content": "my favourite colour is teal"}


def test_unreachable_redis_is_one_clear_line(tmp_path: Path) -> None:
    result = run(["chat"], tmp_path, "hi\n", BOT_REDIS__URL="redis://:hunter2@127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_unknown_persona_is_one_clear_line(tmp_path: Path) -> None:
    result = run(["chat", "--persona", "ghost"], tmp_path, "hi\n")
    assert result.returncode == 1
    assert "no persona 'ghost'" in result.stderr and "Traceback" not in result.stderr
