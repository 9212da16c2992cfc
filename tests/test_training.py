"""Training data, loss masks, the CPU training loop and the `train` CLI (tiny data, a few steps)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.domain.messages import ChatMessage, ChatRequest, Speaker
from bot.domain.persona import Example, GenerationParams, Persona
from bot.models.local import LocalRuntime
from bot.models.local_loader import LoadedModel, load_local_model
from bot.settings import ModelSettings, Settings
from bot.training.data import (
    ChatExample,
    load_jsonl,
    persona_examples,
    split_holdout,
    with_system,
)
from bot.training.encoding import IGNORE, encode
from bot.training.errors import TrainingError
from bot.training.loop import LoopOptions
from bot.training.methods import LoraOptions, SoftPromptOptions
from bot.training.run import Losses, TrainingData, _warnings, check_output, train_adapter
from tests.conftest import MODEL_CACHE

PERSONA = Persona(
    id="pirate",
    name="Pirate",
    system_prompt="You are a pirate. Talk like one.",
    examples=(Example(user="Hello", assistant="Ahoy, matey!"),),
)
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=4)
CHATS = [
    ("How are you?", "Arr, fit as a fiddle, matey!"),
    ("What is 2+2?", "Arr, that be 4, matey!"),
    ("Any advice?", "Never sail without a map, matey. Arr!"),
    ("Good night!", "Fair winds, matey. Arr!"),
    ("Tell me a joke.", "Why be pirates great? They just arrrr! Arr, matey."),
    ("Do you like fish?", "Aye, matey, fresh from the sea! Arr."),
]


def write_jsonl(path: Path, chats: list[tuple[str, str]]) -> Path:
    rows = [{"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]} for u, a in chats]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fresh_model() -> LoadedModel:
    return load_local_model(ModelSettings(), MODEL_CACHE)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module: on a busy 2-core runner, two threads run small matmuls
    ~10x slower whenever another process holds a core (measured); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return fresh_model().tokenizer


# -- data ---------------------------------------------------------------------------------------


def test_jsonl_examples_and_their_hash(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", CHATS[:2])
    examples, source = load_jsonl(path)
    assert [e.messages[-1].content for e in examples] == [a for _, a in CHATS[:2]]
    assert source.examples == 2 and len(source.sha256) == 64
    write_jsonl(path, CHATS[:3])
    assert load_jsonl(path)[1].sha256 != source.sha256


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: invalid JSON"),
        ('{"messages": []}', 'expected {"messages"'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "the last message must be the assistant's"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "each message needs a role"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, '
            '{"role": "assistant", "content": "c"}]}',
            "a system message may only come first",
        ),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", CHATS[:1])
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(TrainingError, match=r"d\.jsonl:2") as caught:
        load_jsonl(path)
    assert message in str(caught.value)


async def test_from_feedback_keeps_upvoted_majority_replies_in_their_prompt(settings: Settings) -> None:
    """`train --from-feedback` reads the real Redis feedback log that the engine wrote."""
    from bot.app import build_runtime
    from bot.cli_train import gather_data

    async with build_runtime(settings) as rt:
        replies = {}
        for text, persona in [("good", "captain"), ("tied", "captain"), ("bad", "captain"), ("other", "terse")]:
            request = ChatRequest(f"conv-{text}", Speaker("u", "Sam"), f"say {text}", persona_id=persona)
            replies[text] = await rt.engine.reply(request)
        votes = {"good": {"a": 1, "b": 1, "c": -1}, "tied": {"a": 1, "b": -1}, "bad": {"a": -1}, "other": {"a": 1}}
        for text, by_user in votes.items():
            for user, value in by_user.items():
                await rt.engine.rate(replies[text].reply_id, user, value)
        captain = rt.personas.get("captain")
    examples, sources = await gather_data(settings, captain, [], from_feedback=True, use_examples=False)
    assert [e.messages[-1].content for e in examples] == [replies["good"].text]
    [example] = examples
    assert [m.content for m in example.messages[: example.context]] == [
        m["content"] for m in replies["good"].record.prompt_messages
    ]
    assert [(s.name, s.examples) for s in sources] == [("feedback:captain", 1)]


def test_persona_examples_get_the_system_prompt_and_split_is_stable() -> None:
    examples, _ = persona_examples(PERSONA)
    assert [m.role for m in examples[0].messages] == ["user", "assistant"]
    chats = [ChatExample((ChatMessage("user", u), ChatMessage("assistant", a)), "t") for u, a in CHATS]
    systemed = with_system(chats, "SYS")
    assert all(e.messages[0] == ChatMessage("system", "SYS") for e in systemed)
    train, held = split_holdout(systemed, 0.34, seed=0)
    assert len(held) == 2 and len(train) == 4
    _, held2 = split_holdout(list(reversed(systemed)), 0.34, seed=0)
    assert {e.key() for e in held2} == {e.key() for e in held}  # independent of file order


def test_loss_mask_covers_exactly_the_assistant_replies(tokenizer: Any) -> None:
    chat = ChatExample(
        (
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Ahoy there!"),
            ChatMessage("user", "Bye"),
            ChatMessage("assistant", "Fair winds!"),
        ),
        "t",
    )

    def trained_text(example: ChatExample) -> str:
        encoded = encode(tokenizer, example, max_length=512)
        assert encoded is not None
        pairs = zip(encoded.input_ids, encoded.labels, strict=True)
        return "".join(tokenizer.decode([token]) for token, label in pairs if label != IGNORE)

    assert trained_text(chat) == "Ahoy there!<|im_end|>Fair winds!<|im_end|>"
    rated_reply = ChatExample(chat.messages, "t", context=4)
    assert trained_text(rated_reply) == "Fair winds!<|im_end|>"
    cut = encode(tokenizer, chat, max_length=4)  # too long: the start goes, the last reply stays
    assert cut is not None and len(cut.input_ids) == 4 and 0 < cut.trained_tokens < 4


# -- training -----------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.parametrize(
    ("method", "lr"),
    [(SoftPromptOptions(virtual_tokens=8, init_text=PERSONA.system_prompt), 3e-2), (LoraOptions(rank=4), 3e-3)],
    ids=["soft-prompt", "lora"],
)
def test_a_few_steps_lower_the_training_loss_and_the_adapter_serves(
    tmp_path: Path, method: SoftPromptOptions | LoraOptions, lr: float
) -> None:
    examples, source = load_jsonl(write_jsonl(tmp_path / "d.jsonl", CHATS))
    data = TrainingData(examples, [source], holdout=0.2)
    out = tmp_path / "adapter"
    loop = LoopOptions(epochs=2, lr=lr, batch_size=5, max_steps=2)
    result = train_adapter(fresh_model(), PERSONA, data, method, loop, out, command="test")
    loss = result.card["loss"]
    assert loss["train_after"] < loss["train_before"]
    assert result.card["training"]["steps"] == 2
    assert result.card["data"]["sources"][0]["sha256"] == source.sha256
    assert result.card["data"]["held_out_examples"] == 1 and loss["held_out_after"] is not None
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_card.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    runtime = LocalRuntime(fresh_model())  # referenced right away by a persona
    text, _ = runtime.generate_blocking([{"role": "user", "content": "Hi"}], GREEDY, str(out))
    runtime.close()
    assert text


def test_held_out_regressions_are_reported() -> None:
    assert _warnings(Losses(3.0, 2.5, train_after=2.0, held_out_after=2.4)) == []
    (warning,) = _warnings(Losses(3.0, 2.5, train_after=1.0, held_out_after=2.7))
    assert "did NOT lower the held-out loss (2.500 -> 2.700)" in warning
    assert "not measured" in _warnings(Losses(3.0, None, train_after=2.0))[0]


def test_output_must_be_an_adapter_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(TrainingError, match="not an adapter directory"):
        check_output(tmp_path)
    check_output(tmp_path / "new")  # fine: created
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adapter_config.json").write_text("{}")
    check_output(tmp_path / "old")  # fine: replaced


# -- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "pirate.yaml").write_text("id: pirate\nname: Pirate\nsystem_prompt: You are a pirate.\n")
    (personas / "remote.yaml").write_text("id: remote\nname: Remote\nsystem_prompt: Hi.\nmodel:\n  backend: openai\n")
    monkeypatch.setenv("BOT_PERSONAS_DIR", str(personas))
    monkeypatch.setenv("BOT_DATA_DIR", str(MODEL_CACHE))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str) -> tuple[int, str]:
    from bot.cli_train import train_app

    result = CliRunner().invoke(train_app, list(args))
    return result.exit_code, result.output


@pytest.mark.model
def test_cli_trains_a_soft_prompt_with_a_card(cli_env: Path) -> None:
    data = write_jsonl(cli_env / "d.jsonl", CHATS)
    code, output = run_cli(
        "soft-prompt",
        "--persona",
        "pirate",
        "--out",
        "adapters/p",
        "--data",
        str(data),
        "--virtual-tokens",
        "4",
        "--max-steps",
        "1",
        "--batch-size",
        "5",
    )
    assert code == 0, output
    card = json.loads((cli_env / "adapters/p/adapter_card.json").read_text())
    assert card["kind"] == "prompt" and card["method"] == {"virtual_tokens": 4, "init": "text"}
    assert card["training"]["steps"] == 1 and card["data"]["train_examples"] + card["data"]["held_out_examples"] == 6
    assert "adapter: adapters/p" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("lora", "--persona", "pirate", "--out", "a", "--no-examples"), "no training data for 'pirate'"),
        (("lora", "--persona", "ghost", "--out", "a"), "no persona 'ghost'"),
        (("soft-prompt", "--persona", "remote", "--out", "a"), "uses the openai backend"),
        (("lora", "--persona", "pirate", "--out", "a", "--data", "missing.jsonl"), "cannot read training data"),
    ],
)
def test_cli_errors_are_one_clear_line(cli_env: Path, args: tuple[str, ...], message: str) -> None:
    code, output = run_cli(*args)
    assert code == 1 and message in output, output


def test_cli_names_a_broken_persona_file(cli_env: Path) -> None:
    (cli_env / "personas" / "broken.yaml").write_text("id: broken\nname: Broken\n")  # no system_prompt
    code, output = run_cli("lora", "--persona", "broken", "--out", "a")
    assert code == 1 and "broken persona files" in output and "broken.yaml" in output, output
