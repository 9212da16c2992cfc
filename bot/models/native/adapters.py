"""Adapters on the native forward: LoRA read straight from PEFT's files, soft prompts as embeddings.

`NativeAdapterBank` is `bot.adapters.AdapterBank` without PEFT: the same API (current / ensure / check /
has_room, an LRU of at most `max_loaded_lora` LoRA adapters that never unloads one a row still names),
but loading an adapter reads `adapter_model.safetensors` + `adapter_config.json` and registers its
A/B matrices in `model.loras`, where the native forward applies them per row (B(A(x)) * scaling, as
PEFT computes it). That takes milliseconds instead of PEFT's walk over every module.

`lora_problem(config, tensor names)` says why an adapter needs PEFT (DoRA, biases, per-module ranks,
targets outside the decoder's projections...): the loader then serves the model with transformers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bot.adapters.bank import BankStats, LoadedAdapter, _fingerprint, _return_freed_memory
from bot.adapters.errors import AdapterError
from bot.adapters.spec import CONFIG_FILE, PROMPT_KEY, AdapterKind, BaseModelInfo, check_compatible, read_adapter
from bot.models.native.model import LoraWeights, NativeLlama

log = logging.getLogger(__name__)

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


class NativeAdapterBank:
    def __init__(self, model: NativeLlama, base: BaseModelInfo, *, max_loaded_lora: int | None = None,
                 in_use: Callable[[], set[str]] | None = None) -> None:
        if max_loaded_lora is not None and max_loaded_lora < 1:
            raise ValueError("max_loaded_lora must be >= 1")
        self.base_model = model
        self.base = base
        self.max_loaded_lora = max_loaded_lora
        self.stats = BankStats()
        self._in_use = in_use or set
        self._by_path: OrderedDict[Path, LoadedAdapter] = OrderedDict()  # least recently used first
        self._names: set[str] = {"__base__"}

    def adapters(self) -> list[LoadedAdapter]:
        return list(self._by_path.values())

    def current(self, path: str | Path) -> LoadedAdapter | None:
        resolved = Path(path).expanduser().resolve()
        adapter = self._by_path.get(resolved)
        if adapter is None or adapter.fingerprint != _fingerprint(resolved):
            return None
        with contextlib.suppress(KeyError):
            self._by_path.move_to_end(resolved)
        return adapter

    def check(self, path: str | Path, persona_id: str | None = None) -> AdapterKind:
        spec = read_adapter(Path(path), persona_id, load_weights=False)
        self._check(spec, persona_id)
        return spec.kind

    def _check(self, spec: Any, persona_id: str | None) -> None:
        check_compatible(spec, self.base, self.base_model, persona_id)
        if spec.kind == "lora":
            problem = lora_problem(spec.config, spec.shapes)
            if problem is not None:
                raise AdapterError(str(spec.path), f"{problem} needs the transformers engine "
                                   "(BOT_MODEL__ENGINE=transformers, or restart with the adapter in place: "
                                   "the engine is chosen at start-up)", persona_id=persona_id)

    def ensure(self, path: str | Path, persona_id: str | None = None) -> LoadedAdapter:
        loaded = self.current(path)
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        resolved = Path(path).expanduser().resolve()
        previous = self._by_path.get(resolved)
        fingerprint = _fingerprint(resolved)
        spec = read_adapter(Path(path), persona_id)
        self._check(spec, persona_id)
        name = self._new_name(resolved)
        if spec.kind == "prompt":
            adapter = LoadedAdapter(name, "prompt", resolved, spec.tensors[PROMPT_KEY].float(), fingerprint)
        else:
            try:
                weights = lora_weights(name, spec.config, spec.tensors, self.base_model.shape.num_layers)
            except (ValueError, KeyError, TypeError) as exc:
                self._names.discard(name)
                raise AdapterError(str(path), f"unreadable LoRA weights: {exc}", persona_id=persona_id) from exc
            self.base_model.loras[name] = weights
            adapter = LoadedAdapter(name, "lora", resolved, None, fingerprint)
        if previous is not None:
            self._forget(previous)
            del self._by_path[resolved]
        self._by_path[resolved] = adapter
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started
        log.info("adapter %s (%s) loaded from %s", name, adapter.kind, path)
        if adapter.kind == "lora":
            self._evict(keep=adapter)
        return adapter

    def has_room(self) -> bool:
        return self.max_loaded_lora is None or self.loaded_lora() < self.max_loaded_lora

    def loaded_lora(self) -> int:
        return sum(1 for a in self._by_path.values() if a.kind == "lora")

    def _evict(self, keep: LoadedAdapter) -> None:
        if self.max_loaded_lora is None:
            return
        excess = self.loaded_lora() - self.max_loaded_lora
        if excess <= 0:
            return
        busy = self._in_use()
        for path, adapter in list(self._by_path.items()):
            if excess <= 0:
                break
            if adapter.kind != "lora" or adapter is keep or adapter.name in busy:
                continue
            self._forget(adapter)
            del self._by_path[path]
            self.stats.evictions += 1
            excess -= 1
        _return_freed_memory()

    def _new_name(self, path: Path) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name) or "adapter"
        name, n = stem, 1
        while name in self._names:
            n += 1
            name = f"{stem}-v{n}"
        self._names.add(name)
        return name

    def _forget(self, adapter: LoadedAdapter) -> None:
        self.base_model.loras.pop(adapter.name, None)
        self._names.discard(adapter.name)


def scan_adapters(root: Path) -> Iterable[Path]:
    """Every adapter directory under `root` (those holding an adapter_config.json)."""
    if root.is_dir():
        yield from sorted(p.parent for p in root.rglob(CONFIG_FILE))
