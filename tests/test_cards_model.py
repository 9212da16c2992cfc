"""A SillyTavern card chatting with the real SmolLM2-135M-Instruct (CPU; a few tokens): the card's
whole prompt (greeting as the first assistant turn after the examples, lore at depth, post-history
instructions as a closing system message) goes through the model's chat template and generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import build_runtime
from bot.cards import import_card
from bot.domain.messages import ChatRequest, Speaker
from bot.models.local import LocalRuntime
from bot.models.local_loader import LoadedModel
from bot.models.provider import DefaultModelProvider
from bot.settings import ModelSettings, Settings
from tests import cards_fixtures as tools

pytestmark = pytest.mark.model


async def test_an_imported_sillytavern_card_generates_with_the_real_model(
    settings: Settings, local_model: LoadedModel, tmp_path: Path
) -> None:
    card = tools.sillytavern_card()
    card["data"]["extensions"]["persona_bot"] = {"generation": {"temperature": 0.0, "max_new_tokens": 8}}
    path = tmp_path / "aria.png"
    path.write_bytes(tools.sillytavern_png(card))
    persona = import_card(path, settings.personas_dir).persona
    assert persona.generation.max_new_tokens == 8, "the card's own generation settings (this bot's extension)"
    for other in settings.personas_dir.glob("*.yaml"):  # the shipped adapter personas would load adapters
        if "adapter:" in other.read_text():
            other.unlink()
    runtime = LocalRuntime(local_model)
    try:
        provider = DefaultModelProvider(ModelSettings(), settings.data_dir, runtime=runtime)
        async with build_runtime(settings, model_provider=provider) as rt:
            done = await rt.engine.reply(ChatRequest(
                "c1", Speaker("u1", "Ann"), "Is the c++ code fine? The reactor sounds odd.", persona_id="aria-vance"))
            record = await rt.feedback.get(done.reply_id)
    finally:
        runtime.close()
    assert done.text.strip() and record is not None
    assert record.backend == "local" and 0 < record.completion_tokens <= 8
    assert set(record.lorebook_entries) == {"persona#0", "persona#2", "persona#st-depth-prompt"}
    roles = [m["role"] for m in record.prompt_messages]
    assert roles[0] == roles[-1] == "system" and roles[-2] == "user"
    assert roles.count("assistant") >= 4, "examples, the greeting, and lore at depth as the assistant"
