"""`python -m bot personas import|export|import-lorebook` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cards_data import v2_card
from tests.test_cli import run


def test_import_export_and_errors_from_the_command_line(tmp_path: Path) -> None:
    personas = tmp_path / "personas"
    card = tmp_path / "sera.json"
    card.write_text(json.dumps(v2_card()))
    env = {"BOT_PERSONAS_DIR": str(personas)}
    imported = run(["personas", "import", str(card), "--id", "sera"], tmp_path / "d", **env)
    assert imported.returncode == 0, imported.stderr
    assert "imported 'Seraphina' as persona 'sera'" in imported.stdout and "lorebook entries: 5" in imported.stdout
    assert (personas / "sera.yaml").exists()

    again = run(["personas", "import", str(card), "--id", "sera"], tmp_path / "d", **env)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.count("\n") <= 2 and "persona 'sera' exists" in again.stderr and "--force" in again.stderr

    out = tmp_path / "sera.v3.png"
    exported = run(["personas", "export", "sera", "--format", "card-v3", "--png", "-o", str(out)], tmp_path / "d",
                   **env)
    assert exported.returncode == 0, exported.stderr
    assert out.read_bytes().startswith(b"\x89PNG")

    world = tmp_path / "world.json"
    world.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["gate"], "content": "The gate is shut."}}}))
    book = run(["personas", "import-lorebook", str(world), "--name", "world"], tmp_path / "d", **env)
    assert book.returncode == 0, book.stderr
    assert (personas / "lorebooks" / "world.yaml").exists() and "1 entries" in book.stdout
