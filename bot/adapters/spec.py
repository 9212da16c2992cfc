"""Read and check a PEFT adapter directory before anything touches the shared model.

An adapter directory holds `adapter_config.json` + `adapter_model.safetensors` (as written by
PEFT's `save_pretrained`), optionally our `adapter_card.json`. Two kinds are served:

    lora     PEFT LoRA: low-rank deltas on some Linear layers, served through one PeftModel
    prompt   PEFT prompt tuning: a [virtual_tokens, hidden] soft prompt, served as a tensor

Every problem becomes an `AdapterError` naming the persona and the directory, so a bad adapter
disables its persona with a readable reason instead of failing deep inside PEFT.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bot.adapters.errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "adapter_card.json"
PROMPT_KEY = "prompt_embeddings"

AdapterKind = Literal["lora", "prompt"]
_KINDS: dict[str, AdapterKind] = {"LORA": "lora", "PROMPT_TUNING": "prompt"}


@dataclass(frozen=True, slots=True)
class BaseModelInfo:
    """What an adapter must agree with: the loaded base model's identity and shapes."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    aliases: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: Any, name: str, *aliases: str) -> BaseModelInfo:
        config = model.config
        return cls(
            name=name,
            architecture=(config.architectures or [type(model).__name__])[0],
            hidden_size=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            vocab_size=int(config.vocab_size),
            aliases=tuple(a for a in aliases if a),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class AdapterSpec:
    path: Path
    kind: AdapterKind
    config: dict[str, Any]
    tensors: dict[str, Any]  # name -> torch.Tensor, as saved
    card: dict[str, Any] | None


def normalize_model_name(name: str) -> str:
    """'HuggingFaceTB/SmolLM2-135M-Instruct', '.../SmolLM2-135M-Instruct.Q4_1-98362432' and
    'SmolLM2-135M-Instruct.Q4_1.gguf' all name the same base model: compare them loosely."""
    last = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    last = re.sub(r"\.gguf$", "", last)
    # Quantization / conversion suffixes: .Q4_1, -q8_0, .f16, -bf16, plus our "-<size>" cache tag.
    return re.sub(r"[.-](i?q\d\w*|f16|f32|bf16|fp16)(-\d+)?$", "", last)


def read_adapter(path: Path, persona_id: str | None = None) -> AdapterSpec:
    """Load an adapter directory's config and tensors (small), or raise AdapterError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def fail(reason: str) -> AdapterError:
        return AdapterError(str(path), reason, persona_id=persona_id)

    if not path.is_dir():
        raise fail("directory not found" if not path.exists() else "not a directory")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise fail(f"{CONFIG_FILE} missing (not a PEFT adapter directory?)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{CONFIG_FILE} is corrupt: {exc}") from exc
    if not isinstance(config, dict):
        raise fail(f"{CONFIG_FILE} is not a JSON object")
    peft_type = str(config.get("peft_type", ""))
    kind = _KINDS.get(peft_type)
    if kind is None:
        raise fail(f"unsupported adapter type {peft_type or '(none)'}; supported: LORA, PROMPT_TUNING")
    if not weights_path.is_file():
        raise fail(f"{WEIGHTS_FILE} missing")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise fail(f"{WEIGHTS_FILE} is corrupt: {exc}") from exc
    return AdapterSpec(path, kind, config, tensors, _read_card(path / CARD_FILE))


def _read_card(path: Path) -> dict[str, Any] | None:
    # The card is documentation plus an optional extra check; a broken card is not fatal.
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) else None


def check_compatible(spec: AdapterSpec, base: BaseModelInfo, model: Any, persona_id: str | None = None) -> None:
    """Raise AdapterError unless the adapter was made for this base model (name, architecture, shapes)."""

    def fail(reason: str) -> AdapterError:
        return AdapterError(str(spec.path), reason, persona_id=persona_id)

    trained_on = spec.config.get("base_model_name_or_path")
    known = {normalize_model_name(n) for n in (base.name, *base.aliases)}
    if trained_on and normalize_model_name(str(trained_on)) not in known:
        raise fail(f"trained for base model {trained_on!r}, but the loaded model is {base.name!r}")
    card_base = (spec.card or {}).get("base_model") or {}
    for key in ("architecture", "hidden_size", "num_layers", "vocab_size"):
        if key in card_base and card_base[key] != getattr(base, key):
            raise fail(f"trained for {key}={card_base[key]}, but the loaded model has {getattr(base, key)}")
    if spec.kind == "prompt":
        _check_prompt(spec, base, fail)
    else:
        _check_lora(spec, model, fail)


def _check_prompt(spec: AdapterSpec, base: BaseModelInfo, fail: Any) -> None:
    prompt = spec.tensors.get(PROMPT_KEY)
    if prompt is None or prompt.dim() != 2:
        raise fail(f"{WEIGHTS_FILE} has no 2-D {PROMPT_KEY!r} tensor")
    token_dim = spec.config.get("token_dim", prompt.shape[1])
    if prompt.shape[1] != base.hidden_size or token_dim != base.hidden_size:
        raise fail(f"soft prompt embedding size {prompt.shape[1]} != the model's hidden size {base.hidden_size}")
    expected = spec.config.get("num_virtual_tokens")
    if expected is not None and expected != prompt.shape[0]:
        raise fail(f"{prompt.shape[0]} virtual tokens saved but num_virtual_tokens={expected}")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


def _check_lora(spec: AdapterSpec, model: Any, fail: Any) -> None:
    if spec.config.get("use_dora"):
        raise fail("DoRA adapters cannot be served in mixed batches; retrain without use_dora")
    if any("lora_embedding_" in key for key in spec.tensors):
        # Rows enter generate() as embeddings computed outside PEFT, so an embedding delta would be lost.
        raise fail("LoRA on the token embeddings cannot be served; retrain without embed_tokens in target_modules")
    modules = dict(model.named_modules())
    checked = 0
    for key, tensor in spec.tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        name, part = match["module"], match["part"]
        module = modules.get(name)
        if module is None:
            raise fail(f"targets module {name!r}, which the base model does not have")
        layer = getattr(module, "base_layer", module)  # already wrapped by an earlier LoRA
        in_features, out_features = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        if part == "A" and in_features is not None and tensor.shape[1] != in_features:
            raise fail(f"{name}: lora_A expects {tensor.shape[1]} inputs, the model's layer has {in_features}")
        if part == "B" and out_features is not None and tensor.shape[0] != out_features:
            raise fail(f"{name}: lora_B gives {tensor.shape[0]} outputs, the model's layer has {out_features}")
        checked += 1
    if checked == 0:
        raise fail(f"{WEIGHTS_FILE} holds no LoRA weights")
