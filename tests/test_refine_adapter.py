"""The adapter proposer trains a real soft prompt on the liked replies of a dataset (real model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.domain.messages import ChatMessage
from bot.domain.persona import Persona
from bot.models.local_loader import load_local_model
from bot.refine.dataset import Dataset, ReplayItem
from bot.refine.errors import NotEnoughData
from bot.refine.proposers.adapter import AdapterProposer, liked_chats
from bot.settings import ModelSettings
from bot.training.loop import LoopOptions
from tests.conftest import MODEL_CACHE

PERSONA = Persona(id="captain", name="Captain", system_prompt="You are a pirate captain.")


def item(n: int, ups: int, downs: int) -> ReplayItem:
    history = (ChatMessage("user", "Ahoy"), ChatMessage("assistant", "Arr!")) if n % 2 else ()
    return ReplayItem(f"r{n}", f"c{n}", "default", float(n), history, f"question {n}", f"Arr, answer {n}, matey!",
                      ups, downs)


def dataset(items: list[ReplayItem]) -> Dataset:
    return Dataset("captain", "1", items)


def test_liked_chats_train_the_reply_in_its_context() -> None:
    chats = liked_chats(dataset([item(1, 2, 0), item(2, 0, 1), item(3, 1, 1)]), "x")
    assert len(chats) == 1  # only net-liked replies; 👎 and ties are not supervised targets
    assert [m.role for m in chats[0].messages] == ["user", "assistant", "user", "assistant"]
    assert chats[0].context == 3


async def test_too_few_liked_replies_is_a_clear_error(tmp_path: Path) -> None:
    proposer = AdapterProposer(lambda: pytest.fail("no model needed"), tmp_path)  # type: ignore[arg-type,return-value]
    with pytest.raises(NotEnoughData, match="at least 4 liked replies"):
        await proposer.propose(PERSONA, dataset([item(1, 1, 0)]), [])


@pytest.mark.model
async def test_trains_a_soft_prompt_candidate(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        proposer = AdapterProposer(lambda: load_local_model(ModelSettings(), MODEL_CACHE), tmp_path / "adapters",
                                   loop=LoopOptions(epochs=1, lr=3e-2, batch_size=4, max_steps=1, seed=0,
                                                    max_length=96))
        [candidate] = await proposer.propose(PERSONA, dataset([item(n, 1, 0) for n in range(6)]), [])
    finally:
        torch.set_num_threads(threads)
    out = Path(candidate.change.adapter or "")
    assert out.parent == tmp_path / "adapters" and (out / "adapter_config.json").is_file()
    assert candidate.proposer == "soft-prompt" and candidate.data["examples"] == 6
    assert candidate.persona(PERSONA).adapter == str(out)
