"""Read and check a PEFT adapter directory before anything touches the shared model.

An adapter directory holds `adapter_config.json` + `adapter_model.safetensors` (as written by
PEFT's `save_pretrained`), optionally our `adapter_card.json`. Two kinds are served:

    lora     PEFT LoRA: low-rank deltas on some Linear layers, served through one PeftModel
    prompt   PEFT prompt tuning: a [virtual_tokens, hidden] soft prompt, served as a tensor

Every problem becomes an `AdapterError` naming the persona and the directory, so a bad adapter
disables its persona with a readable reason instead of failing deep inside PEFT.

Checks that need no weights read only the JSON config and the safetensors header (tensor names and
shapes: a few KB), so `personas check` validates an adapter in milliseconds:

    adapter_path_problem("adapters/x", Path("adapters"))   # where it is: inside the root, a PEFT dir
    spec = read_adapter(path, load_weights=False)           # config + shapes only
    check_compatible(spec, base, meta_model)                # identity, kind, widths
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
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
    #: name -> torch.Tensor, as saved (empty when read with load_weights=False)
    tensors: dict[str, Any]
    card: dict[str, Any] | None
    #: name -> shape, from the safetensors header
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


#: Hub ids of base models that the bot knows by a shorter local name (the shipped GGUF's model).
HUB_IDS = {"smollm2-135m-instruct": "huggingfacetb/smollm2-135m-instruct"}
#: Largest safetensors header read (names and shapes of every tensor; real ones are a few KB).
MAX_HEADER_BYTES = 16 * 1024 * 1024


def normalize_model_name(name: str) -> str:
    """A model name for comparison: lower case, `/` separators, without a `.gguf` extension or a
    quantization / conversion suffix on its last part ('.Q4_1', '-f16', our '-<size>' cache tag).
    The whole name is kept: 'evil.example/SmolLM2-135M-Instruct' is not 'SmolLM2-135M-Instruct'."""
    text = name.strip().replace("\\", "/").rstrip("/").lower()
    text = re.sub(r"\.gguf$", "", text)
    return re.sub(r"[.-](i?q\d\w*|f16|f32|bf16|fp16)(-\d+)?$", "", text)


def base_model_names(base: BaseModelInfo) -> set[str]:
    """Every name the loaded base model answers to: its own, its aliases and their hub ids."""
    names = {normalize_model_name(n) for n in (base.name, *base.aliases)}
    return names | {HUB_IDS[n] for n in names if n in HUB_IDS}


def same_base_model(trained_on: str, base: BaseModelInfo) -> bool:
    """Whether an adapter's `base_model_name_or_path` names exactly this base model (not merely a
    name with the same ending)."""
    return normalize_model_name(trained_on) in base_model_names(base)


def adapter_path_problem(adapter: str, root: Path) -> str | None:
    """Why a persona's `adapter:` value cannot be served, judged from the file system alone
    (a URL, outside the adapters directory `root`, missing, not a PEFT directory), or None."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", adapter) or adapter.startswith("file:"):
        return f"an adapter is a directory under {root} (BOT_ADAPTERS_DIR), not a URL: {adapter!r}"
    try:
        real, real_root = Path(adapter).expanduser().resolve(), root.expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"adapter path {adapter!r} cannot be resolved: {exc}"
    if real_root not in real.parents:
        return f"adapter {adapter!r} is outside the adapters directory {root} (BOT_ADAPTERS_DIR)"
    try:
        if not real.exists():
            return f"adapter directory {adapter!r} not found"
        if not real.is_dir():
            return f"adapter {adapter!r} is not a directory"
        if not (real / CONFIG_FILE).is_file():
            return f"adapter {adapter!r} has no {CONFIG_FILE} (not a PEFT adapter directory?)"
    except OSError as exc:  # a name too long for the file system, a permission problem...
        return f"adapter path {adapter!r} cannot be read: {exc.strerror or exc}"
    return None


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header, without reading the weights.

    Raises ValueError for a file that is not a well-formed safetensors file."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"header length {length} does not fit the file ({size} bytes)")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (info or {}).get("shape"), (info or {}).get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ValueError(f"tensor {name!r} has no valid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= size - 8 - length):
            raise ValueError(f"tensor {name!r} lies outside the file (truncated?)")
        shapes[name] = tuple(shape)
    return shapes


def read_adapter(path: Path, persona_id: str | None = None, *, load_weights: bool = True) -> AdapterSpec:
    """An adapter directory's config, tensor shapes and (unless `load_weights` is False) tensors,
    or AdapterError."""

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
        shapes = read_safetensors_shapes(weights_path)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise fail(f"{WEIGHTS_FILE} is corrupt: {exc}") from exc
    tensors = _load_tensors(weights_path, fail) if load_weights else {}
    return AdapterSpec(path, kind, config, tensors, _read_card(path / CARD_FILE), shapes)


def _load_tensors(weights_path: Path, fail: Any) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise fail(f"{WEIGHTS_FILE} is corrupt: {exc}") from exc


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
    if trained_on and not same_base_model(str(trained_on), base):
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
    shape = spec.shapes.get(PROMPT_KEY)
    if shape is None or len(shape) != 2:
        raise fail(f"{WEIGHTS_FILE} has no 2-D {PROMPT_KEY!r} tensor")
    tokens, width = shape
    if width != base.hidden_size:
        raise fail(f"soft prompt embedding size {width} (the saved tensor's width) != the model's hidden size "
                   f"{base.hidden_size}")
    token_dim = spec.config.get("token_dim")
    if token_dim is not None and token_dim != base.hidden_size:
        raise fail(f"{CONFIG_FILE} says token_dim={token_dim}, but the model's hidden size (and the saved "
                   f"tensor's width) is {base.hidden_size}")
    expected = spec.config.get("num_virtual_tokens")
    if expected is not None and expected != tokens:
        raise fail(f"{tokens} virtual tokens saved but num_virtual_tokens={expected}")


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


def _check_lora(spec: AdapterSpec, model: Any, fail: Any) -> None:
    if spec.config.get("use_dora"):
        raise fail("DoRA adapters cannot be served in mixed batches; retrain without use_dora")
    if any("lora_embedding_" in key for key in spec.shapes):
        # Rows enter generate() as embeddings computed outside PEFT, so an embedding delta would be lost.
        raise fail("LoRA on the token embeddings cannot be served; retrain without embed_tokens in target_modules")
    modules = dict(model.named_modules())
    checked = 0
    for key, shape in spec.shapes.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue
        name, part = match["module"], match["part"]
        module = modules.get(name)
        if module is None:
            raise fail(f"targets module {name!r}, which the base model does not have")
        layer = getattr(module, "base_layer", module)  # already wrapped by an earlier LoRA
        in_features, out_features = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        if len(shape) != 2:
            raise fail(f"{name}: lora_{part} is not a 2-D matrix (shape {list(shape)})")
        if part == "A" and in_features is not None and shape[1] != in_features:
            raise fail(f"{name}: lora_A expects {shape[1]} inputs, the model's layer has {in_features}")
        if part == "B" and out_features is not None and shape[0] != out_features:
            raise fail(f"{name}: lora_B gives {shape[0]} outputs, the model's layer has {out_features}")
        checked += 1
    if checked == 0:
        raise fail(f"{WEIGHTS_FILE} holds no LoRA weights")
