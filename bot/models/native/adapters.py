"""Adapters on the native forward: LoRA read straight from PEFT's files, soft prompts as embeddings.

`NativeAdapterBank` is `bot.adapters.AdapterBank` without PEFT: the same bookkeeping (bot.adapters.lru:
current / ensure / check / has_room, an LRU of at most `max_loaded_lora` LoRA adapters that never
unloads one a row still names), but loading an adapter reads `adapter_model.safetensors` +
`adapter_config.json` and registers its A/B matrices in `model.loras`, where the native forward
applies them per row (B(A(x)) * scaling, as PEFT computes it). That takes milliseconds instead of
PEFT's walk over every module.

`lora_problem(config, tensor names)` says why an adapter needs PEFT (DoRA, biases, per-module ranks,
targets outside the decoder's projections...): the loader then serves the model with transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.adapters.errors import AdapterError
from bot.adapters.lru import AdapterLru
from bot.adapters.spec import CONFIG_FILE, AdapterSpec
from bot.models.native.model import LoraWeights

_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?P<proj>(?:self_attn|mlp)\.\w+)"
                  r"\.lora_(?P<part>A|B)(?:\.[\w-]+)?\.weight$")
_PROJECTIONS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
#: LoRA options that change what the adapter computes, with the value the native forward assumes.
_PLAIN = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
          "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "target_parameters": None,
          "trainable_token_indices": None, "use_qalora": False, "alora_invocation_tokens": None,
          "megatron_config": None, "arrow_config": None}


def lora_problem(config: dict[str, Any], tensor_names: Iterable[str]) -> str | None:
    """Why the native forward cannot compute this LoRA adapter exactly (None: it can)."""
    for option, plain in _PLAIN.items():
        value = config.get(option, plain)
        if value != plain and value not in (None, [], {}, False, "none"):
            return f"LoRA option {option}={value!r}"
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        return f"rank r={config.get('r')!r}"
    for name in tensor_names:
        if "lora_" in name and _KEY.match(name) is None:
            return f"a LoRA weight outside the decoder's projections ({name})"
        match = _KEY.match(name)
        if match is not None and match["proj"] not in _PROJECTIONS:
            return f"a LoRA on {match['proj']}"
    return None


def _scaling(config: dict[str, Any]) -> float:
    r, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def lora_weights(name: str, config: dict[str, Any], tensors: dict[str, Any], layers: int) -> LoraWeights:
    per_layer: list[dict[str, tuple[Any, Any]]] = [{} for _ in range(layers)]
    parts: dict[tuple[int, str], dict[str, Any]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is not None:
            parts.setdefault((int(match["layer"]), match["proj"]), {})[match["part"]] = tensor.float().contiguous()
    nbytes = 0
    for (layer, proj), pair in parts.items():
        if set(pair) != {"A", "B"} or layer >= layers:
            raise ValueError(f"layer {layer} {proj}: lora_A and lora_B must come together, inside the model")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != config["r"] or b.shape[1] != config["r"]:
            raise ValueError(f"layer {layer} {proj}: rank {a.shape[0]} but r={config['r']}")
        per_layer[layer][proj] = (a, b)
        nbytes += a.nbytes + b.nbytes
    return LoraWeights(name, _scaling(config), per_layer, nbytes)


class NativeAdapterBank(AdapterLru):
    check_reads_weights = False  # config and tensor headers say all `_check` needs

    def _check(self, spec: AdapterSpec, persona_id: str | None) -> None:
        super()._check(spec, persona_id)
        if spec.kind == "lora":
            problem = lora_problem(spec.config, spec.shapes)
            if problem is not None:
                raise AdapterError(str(spec.path), f"{problem} needs the transformers engine "
                                   "(BOT_MODEL__ENGINE=transformers, or restart with the adapter in place: "
                                   "the engine is chosen at start-up)", persona_id=persona_id)

    def _soft_prompt(self, tensor: Any) -> Any:
        return tensor.float()

    def _load_lora(self, spec: AdapterSpec, name: str, persona_id: str | None) -> None:
        try:
            weights = lora_weights(name, spec.config, spec.tensors, self.base_model.shape.num_layers)
        except (ValueError, KeyError, TypeError) as exc:
            raise AdapterError(str(spec.path), f"unreadable LoRA weights: {exc}", persona_id=persona_id) from exc
        self.base_model.loras[name] = weights

    def _unload_lora(self, name: str) -> None:
        self.base_model.loras.pop(name, None)


def scan_adapters(root: Path) -> Iterable[Path]:
    """Every adapter directory under `root` (those holding an adapter_config.json)."""
    if root.is_dir():
        yield from sorted(p.parent for p in root.rglob(CONFIG_FILE))
