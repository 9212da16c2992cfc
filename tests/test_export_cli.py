"""`bot feedback export --format ...` through the CLI (the formats themselves: test_export.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests import test_report_cli as shared

env = shared.env  # the fixture: a Redis seeded with 8 rated replies of two variants
invoke = shared.invoke


def test_export_formats_to_file_and_stdout(env: dict[str, str | None], tmp_path: Path) -> None:
    out = tmp_path / "kto.jsonl"
    result = invoke(env, "export", "--format", "kto", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["label"] for r in rows) == Counter({True: 4, False: 4})
    assert all(set(r) == {"prompt", "completion", "label"} for r in rows)
    assert "exported 8 kto rows from 8 rated replies" in result.stderr

    sft = invoke(env, "export", "-f", "sft", "--no-system-prompt")
    lines = [json.loads(line) for line in sft.stdout.splitlines()]
    assert len(lines) == 4 and all(set(r) == {"messages"} for r in lines)

    jsonl = invoke(env, "export", "--persona", "captain", "--min-ratings", "2")
    assert jsonl.exit_code == 0 and jsonl.stdout == "" and "(8 skipped)" in jsonl.stderr


def test_export_rejects_unknown_format(env: dict[str, str | None]) -> None:
    result = invoke(env, "export", "--format", "csv")
    assert result.exit_code == 2 and "choose one of jsonl, sft, kto, dpo" in result.stderr
