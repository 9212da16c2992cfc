"""Serving LoRA adapters and soft prompts from one shared SmolLM2 (CPU, greedy, <= 8 new tokens).

References are computed with PEFT itself on private model copies (PeftModel.generate for LoRA, a
cache-free greedy loop over PeftModel.forward for prompt tuning), then the adapters are saved and
served by a LocalRuntime: outputs must match token for token, alone, batched and concurrently.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from bot.adapters import AdapterBank, AdapterError
from bot.adapters.spec import BaseModelInfo, normalize_model_name, same_base_model
from bot.domain.persona import GenerationParams
from bot.errors import ModelLoadError
from bot.models.local import GenerationResult, LocalChatModel, LocalRuntime
from bot.models.local_loader import LoadedModel, load_local_model
from bot.settings import ModelSettings
from bot.training.run import save_adapter
from tests.conftest import MODEL_CACHE, REPO

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0)
CHATS = [
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tell me about the sea."}],
    [{"role": "user", "content": "Hi"}],
]
#: name -> (seed, lora_alpha, target modules): small random LoRAs whose greedy replies stay fluent
#: (no near-ties) yet differ from each other and from the base model on both CHATS.
LORAS = {"lora-a": (1, 8, ["q_proj", "v_proj"]), "lora-b": (2, 6, ["v_proj", "o_proj"])}


def fresh_model() -> LoadedModel:
    """A private copy of the base model (fast after the first load) for PEFT to wrap."""
    return load_local_model(ModelSettings(), MODEL_CACHE)


def chat_ids(loaded: LoadedModel, chat: list[dict[str, str]]) -> Any:
    encoded = loaded.tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"]


def greedy(model: Any, loaded: LoadedModel, chat: list[dict[str, str]], prompt: Any = None) -> list[int]:
    """Plain transformers greedy decoding; `prompt`: soft prompt embeddings to put first."""
    import torch

    ids = chat_ids(loaded, chat)
    with torch.inference_mode():
        inputs = model.get_input_embeddings()(ids)
        if prompt is not None:
            inputs = torch.cat([prompt[None], inputs], dim=1)
        out = model.generate(
            inputs_embeds=inputs,
            attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long),
            do_sample=False,
            max_new_tokens=GREEDY.max_new_tokens,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )[0].tolist()
    eos = loaded.tokenizer.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


def card_for(loaded: LoadedModel, kind: str) -> dict[str, Any]:
    return {"kind": kind, "base_model": BaseModelInfo.of(loaded.model, loaded.name).to_dict()}


@dataclass
class Made:
    root: Path
    refs: dict[str, list[list[int]]]  # adapter name ("base" for none) -> greedy tokens per chat
    loaded: LoadedModel  # the private copy, base weights again after each LoRA was unloaded
    soft_model: Any  # the in-memory PEFT prompt-tuning model that was saved as "soft"

    def path(self, name: str) -> str | None:
        return None if name == "base" else str(self.root / name)


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
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """Two LoRAs and a soft prompt, each saved after computing its greedy replies in memory."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    loaded = fresh_model()
    refs = {"base": [greedy(loaded.model, loaded, chat) for chat in CHATS]}
    for name, (seed, alpha, targets) in LORAS.items():
        torch.manual_seed(seed)
        config = LoraConfig(
            r=4, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"
        )
        model = get_peft_model(loaded.model, config)
        model.peft_config["default"].base_model_name_or_path = loaded.name
        model.eval()
        refs[name] = [greedy(model, loaded, chat) for chat in CHATS]  # the LoRA applies inside generate
        save_adapter(model, root / name, card_for(loaded, "lora"))
        loaded.model = model.unload()  # the plain base model again, for the next adapter
    torch.manual_seed(3)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, prompt_tuning_init=PromptTuningInit.RANDOM)
    soft = get_peft_model(loaded.model, config)
    soft.peft_config["default"].base_model_name_or_path = loaded.name
    soft.eval()
    prompt = soft.get_prompt_embedding_to_save("default")
    refs["soft"] = [greedy(loaded.model, loaded, chat, prompt) for chat in CHATS]
    save_adapter(soft, root / "soft", card_for(loaded, "prompt"))
    return Made(root, refs, loaded, soft)


@pytest.fixture(scope="module")
def runtime() -> Iterator[LocalRuntime]:
    """The serving runtime on its own model copy (its bank wraps the model; keep it out of other tests)."""
    rt = LocalRuntime(fresh_model())
    yield rt
    rt.close()


# -- serving ------------------------------------------------------------------------------------


@pytest.mark.model
def test_adapters_change_outputs(made: Made) -> None:
    # The bleed tests below only mean something if every adapter answers differently.
    for i in range(len(CHATS)):
        answers = [tuple(refs[i]) for refs in made.refs.values()]
        assert len(set(answers)) == len(answers)


@pytest.mark.model
def test_soft_prompt_reference_is_what_peft_itself_computes(made: Made) -> None:
    """PEFT's own prompt-tuning forward (the one training uses) predicts every reference token."""
    import torch

    for chat, tokens in zip(CHATS, made.refs["soft"], strict=True):
        ids = chat_ids(made.loaded, chat)
        seq = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
        with torch.inference_mode():
            logits = made.soft_model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0]
        first = 8 + ids.shape[1] - 1  # after the 8 virtual tokens and the prompt
        assert logits[first : first + len(tokens)].argmax(-1).tolist() == tokens


@pytest.mark.model
@pytest.mark.parametrize("name", ["lora-a", "soft", "lora-b", "base"])
def test_saved_adapter_serves_the_same_tokens_as_in_memory(made: Made, runtime: LocalRuntime, name: str) -> None:
    for chat, expected in zip(CHATS, made.refs[name], strict=True):
        row = runtime.row(chat, made.path(name))
        assert runtime.generate_rows([row], GREEDY) == [expected]


@pytest.mark.model
def test_mixed_batch_equals_rows_alone(made: Made, runtime: LocalRuntime) -> None:
    # Rows alone are the references (the round-trip test shows the runtime serves them alone too).
    plan = [("lora-a", 0), ("soft", 1), ("base", 0), ("lora-b", 1), ("soft", 0), ("lora-a", 1)]
    rows = [runtime.row(CHATS[chat], made.path(name)) for name, chat in plan]
    assert runtime.generate_rows(rows, GREEDY) == [made.refs[name][chat] for name, chat in plan]


@pytest.mark.model
async def test_concurrent_personas_never_bleed(made: Made, runtime: LocalRuntime) -> None:
    names = ["lora-a", "soft", "lora-b", "base"]
    tokenizer = runtime.loaded.tokenizer
    expected = [tokenizer.decode(made.refs[n][0], skip_special_tokens=True) for n in names]
    messages = [SystemMessage(CHATS[0][0]["content"]), HumanMessage(CHATS[0][1]["content"])]
    models = [LocalChatModel(runtime=runtime, params=GREEDY, adapter=made.path(n)) for n in names]

    async def streamed(model: LocalChatModel) -> str:
        return "".join([str(chunk.content) async for chunk in model.astream(messages)])

    assert await asyncio.gather(*(streamed(m) for m in models)) == expected
    # The blocking path from several threads at once (LangChain's sync invoke) is serialized too.
    with ThreadPoolExecutor(max_workers=4) as pool:
        texts = list(pool.map(lambda m: m.invoke(messages).content, models))
    assert texts == expected


@pytest.mark.model
async def test_soft_prompt_streams_only_new_text(made: Made, runtime: LocalRuntime) -> None:
    pieces = [item async for item in runtime.stream(CHATS[1], GREEDY, made.path("soft"))]
    result = pieces.pop()
    assert isinstance(result, GenerationResult)
    text = "".join(str(p) for p in pieces)
    assert text == runtime.loaded.tokenizer.decode(made.refs["soft"][1], skip_special_tokens=True)
    assert result.prompt_tokens == len(runtime.encode_chat(CHATS[1])) + 8  # the 8 virtual tokens count
    assert result.completion_tokens == len(made.refs["soft"][1])


@pytest.mark.model
def test_one_peft_model_holds_every_lora(made: Made, runtime: LocalRuntime) -> None:
    a = runtime.ensure_adapter("p1", made.root / "lora-a")
    b = runtime.ensure_adapter("p2", made.root / "lora-b")
    soft = runtime.ensure_adapter("p3", made.root / "soft")
    assert runtime.adapters.peft_model is not None
    assert {a, b} <= set(runtime.adapters.peft_model.peft_config)
    assert soft not in runtime.adapters.peft_model.peft_config  # soft prompts are plain tensors
    assert runtime.ensure_adapter("p4", str(made.root / "lora-a")) == a  # loaded once, shared


@pytest.mark.model
def test_a_second_bank_on_a_wrapped_model_is_refused(made: Made, runtime: LocalRuntime) -> None:
    # A plain call on a model with injected LoRA layers would silently apply the active adapter.
    runtime.ensure_adapter("p", made.root / "lora-a")
    with pytest.raises(ValueError, match="already carries LoRA layers"):
        AdapterBank(runtime.adapters.base_model, runtime.adapters.base)


@pytest.mark.model
def test_retrained_adapter_is_reloaded(made: Made, runtime: LocalRuntime, tmp_path: Path) -> None:
    target = tmp_path / "retrained"
    shutil.copytree(made.root / "lora-a", target)
    first = runtime.ensure_adapter("p", target)
    shutil.rmtree(target)
    shutil.copytree(made.root / "lora-b", target)  # a new training run replaced the directory
    second = runtime.ensure_adapter("p", target)
    assert second != first and first not in runtime.adapters.peft_model.peft_config
    assert runtime.generate_rows([runtime.row(CHATS[0], target)], GREEDY) == [made.refs["lora-b"][0]]


@pytest.mark.model
@pytest.mark.parametrize("name", ["captain-soft", "captain-lora"])
def test_shipped_adapters_fit_the_bundled_model(runtime: LocalRuntime, name: str) -> None:
    adapter = runtime.ensure_adapter(name, REPO / "adapters" / name)
    card = json.loads((REPO / "adapters" / name / "adapter_card.json").read_text())
    assert card["base_model"]["name"] == runtime.name and adapter


@pytest.mark.model
def test_a_soft_prompts_positions_come_out_of_the_prompt_budget(runtime: LocalRuntime, tmp_path: Path) -> None:
    from bot.domain.persona import Persona
    from bot.models.provider import DefaultModelProvider
    from bot.settings import ModelSettings

    provider = DefaultModelProvider(ModelSettings(), tmp_path, runtime=runtime)
    plain = Persona(id="plain", name="Plain", system_prompt="Hi.")
    soft = plain.model_copy(update={"id": "soft", "adapter": str(REPO / "adapters" / "captain-soft")})
    runtime.ensure_adapter("soft", REPO / "adapters" / "captain-soft")
    virtual = json.loads((REPO / "adapters" / "captain-soft" / "adapter_config.json").read_text())["num_virtual_tokens"]
    assert provider.bind(soft).context_window == provider.bind(plain).context_window - virtual > 0


# -- bad adapter directories --------------------------------------------------------------------


def _copy(made: Made, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made.root / name, tmp_path / f"bad-{name}"))


def _edit_config(path: Path, **changes: Any) -> None:
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def _replace_tensor(path: Path, key: str, shape: tuple[int, ...]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "adapter_model.safetensors"))
    tensors[key] = torch.zeros(shape)
    save_file(tensors, str(path / "adapter_model.safetensors"))


def _lora_key(path: Path, part: str) -> str:
    from safetensors.torch import load_file

    return next(k for k in load_file(str(path / "adapter_model.safetensors")) if f"lora_{part}" in k)


BAD_CASES = {
    "missing directory": ("lora-a", lambda p: shutil.rmtree(p), "directory not found"),
    "no config": ("lora-a", lambda p: (p / "adapter_config.json").unlink(), "adapter_config.json missing"),
    "corrupt config": ("soft", lambda p: (p / "adapter_config.json").write_text("{not json"), "corrupt"),
    "unsupported type": ("lora-a", lambda p: _edit_config(p, peft_type="IA3"), "unsupported adapter type IA3"),
    "no weights": ("soft", lambda p: (p / "adapter_model.safetensors").unlink(), "safetensors missing"),
    "truncated weights": (
        "lora-a",
        lambda p: (p / "adapter_model.safetensors").write_bytes((p / "adapter_model.safetensors").read_bytes()[:100]),
        "adapter_model.safetensors is corrupt",
    ),
    "other base model": (
        "lora-a",
        lambda p: _edit_config(p, base_model_name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct"),
        "trained for base model 'HuggingFaceTB/SmolLM2-360M-Instruct'",
    ),
    "soft prompt embedding size": (
        "soft",
        lambda p: (_replace_tensor(p, "prompt_embeddings", (8, 960)), _edit_config(p, token_dim=960)),
        "embedding size 960",
    ),
    "lora shapes": ("lora-a", lambda p: _replace_tensor(p, _lora_key(p, "A"), (4, 960)), "expects 960 inputs"),
    "lora module missing": (
        "lora-a",
        lambda p: _replace_tensor(p, "base_model.model.model.layers.99.self_attn.q_proj.lora_A.weight", (4, 576)),
        "does not have",
    ),
    "card architecture": (
        "soft",
        lambda p: (p / "adapter_card.json").write_text(json.dumps({"base_model": {"hidden_size": 960}})),
        "hidden_size=960",
    ),
}


@pytest.mark.model
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_adapter_is_a_clear_error_and_leaves_the_others_alone(
    made: Made, runtime: LocalRuntime, tmp_path: Path, case: str
) -> None:
    source, damage, message = BAD_CASES[case]
    path = _copy(made, source, tmp_path)
    damage(path)
    runtime.ensure_adapter("other", made.root / "lora-a")
    before = (runtime.adapters.adapters(), set(runtime.adapters.peft_model.peft_config))
    with pytest.raises(AdapterError) as caught:
        runtime.ensure_adapter("pirate", path)
    assert isinstance(caught.value, ModelLoadError)  # the provider's "cannot serve this persona"
    text = str(caught.value)
    assert text.startswith(f"persona 'pirate': adapter {path}: ") and message in text, text
    # Nothing half-loaded: the other personas' adapters are exactly as they were.
    assert (runtime.adapters.adapters(), set(runtime.adapters.peft_model.peft_config)) == before


def test_base_model_identity_is_exact_up_to_quantization_suffixes() -> None:
    loaded_from = "data/models/SmolLM2-135M-Instruct.Q4_1-98362432"
    base = BaseModelInfo("SmolLM2-135M-Instruct", "LlamaForCausalLM", 576, 30, 49152,
                         aliases=(Path(loaded_from).name, loaded_from))
    same = [
        "HuggingFaceTB/SmolLM2-135M-Instruct",  # the shipped model's hub id
        "data/models/SmolLM2-135M-Instruct.Q4_1-98362432",  # the directory it was loaded from
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct-f16",
        "SmolLM2-135M-Instruct",
    ]
    assert all(same_base_model(n, base) for n in same)
    for other in ("https://evil.example/SmolLM2-135M-Instruct", "evil/SmolLM2-135M-Instruct",
                  "/somewhere/else/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "Instruct"):
        assert not same_base_model(other, base), other
    assert normalize_model_name("Org/Model.Q4_1.gguf") == "org/model"


@pytest.mark.model
async def test_least_recently_used_loras_are_unloaded_and_reload_on_use(
        made: Made, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many LoRA personas on one base: only max_loaded_lora stay loaded; one that a row is still
    decoding with is never unloaded; an unloaded one comes back on its next use with the same replies."""
    runtime = LocalRuntime(fresh_model(), ModelSettings(max_loaded_lora=1))
    bank = runtime.adapters
    # The worker pauses between steps while a row is mid-decode, until `resume`: the lora-b row
    # below is then certainly still decoding when lora-a loads (a short reply could otherwise end first).
    scheduler, resume = runtime.scheduler, threading.Event()
    next_admissions = scheduler._next_admissions

    def paused_while_decoding() -> Any:
        if scheduler.active and not resume.is_set():
            resume.wait(timeout=60)
        return next_admissions()

    async def reply(name: str) -> list[int]:
        pieces = [item async for item in runtime.stream(CHATS[0], GREEDY, made.path(name))]
        result = pieces.pop()
        assert isinstance(result, GenerationResult)
        return runtime.loaded.tokenizer.encode("".join(map(str, pieces)), add_special_tokens=False)

    def decoded(name: str) -> list[int]:
        text = runtime.loaded.tokenizer.decode(made.refs[name][0], skip_special_tokens=True)
        return runtime.loaded.tokenizer.encode(text, add_special_tokens=False)

    try:
        assert await reply("lora-a") == decoded("lora-a")
        assert await reply("lora-b") == decoded("lora-b")
        assert bank.loaded_lora() == 1 and bank.stats.evictions == 1
        assert bank.current(made.root / "lora-a") is None  # unloaded, still valid on disk
        # While a lora-b row decodes, loading lora-a must not unload lora-b.
        monkeypatch.setattr(scheduler, "_next_admissions", paused_while_decoding)
        stream = runtime.stream(CHATS[0], GREEDY.model_copy(update={"max_new_tokens": 24}), made.path("lora-b"))
        assert isinstance(await anext(stream), str)
        await asyncio.to_thread(runtime.ensure_adapter, "p", made.root / "lora-a")
        assert bank.loaded_lora() == 2 and bank.current(made.root / "lora-b") is not None
        resume.set()
        async for _ in stream:
            pass
        assert await reply("lora-a") == decoded("lora-a")  # reloaded: the same replies
        assert bank.stats.loads == 3  # a, b, a again (b stayed: it was busy; the next load trims)
    finally:
        resume.set()
        runtime.close()
