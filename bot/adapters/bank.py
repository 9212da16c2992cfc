"""AdapterBank: every adapter served from the one shared base model.

LoRA adapters all live in ONE PeftModel wrapped around the base model (`load_adapter(...,
adapter_name=...)`); a batch picks an adapter per row with `adapter_names` ("__base__": none).
Soft prompts are small [virtual_tokens, hidden] tensors prepended to the token embeddings by
`bot.adapters.batch` -- PEFT's own prompt-tuning `generate()` is not used: with transformers 5 its
cache hook misses the KV cache and re-inserts the soft prompt at every step (garbage output), and
prompt tuning and LoRA cannot share a PeftModel anyway.

Wrapping injects LoRA layers into the base model's modules IN PLACE: from the first LoRA on, a
plain `model.generate()` would apply the active adapter to every row. All generation must therefore
go through `build_batch` (which always names each row's adapter) and `generator`.

Not thread-safe: loading mutates the model. The caller (LocalRuntime) serializes `ensure` and
generation with one lock.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.adapters.errors import AdapterError
from bot.adapters.spec import (
    PROMPT_KEY,
    WEIGHTS_FILE,
    AdapterKind,
    BaseModelInfo,
    check_compatible,
    read_adapter,
)

log = logging.getLogger(__name__)

#: PEFT's name for "no LoRA on this row" in a mixed batch.
BASE = "__base__"


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    kind: AdapterKind
    path: Path
    #: The soft prompt, [virtual_tokens, hidden] in the model's dtype (None for LoRA).
    prompt: Any = None
    #: (mtime_ns, size) of the weights file when loaded: a retrained adapter is reloaded.
    fingerprint: tuple[int, int] = (0, 0)

    @property
    def virtual_tokens(self) -> int:
        return 0 if self.prompt is None else int(self.prompt.shape[0])


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        stat = (path / WEIGHTS_FILE).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


class AdapterBank:
    def __init__(self, model: Any, base: BaseModelInfo) -> None:
        if any(hasattr(module, "lora_A") for module in model.modules()):
            # Another bank (or a training run) injected LoRA layers: a plain call would apply them.
            raise ValueError("this model already carries LoRA layers; use one AdapterBank per loaded model")
        self.base_model = model
        self.base = base
        self.peft_model: Any = None
        self._by_path: dict[Path, LoadedAdapter] = {}
        self._names: set[str] = {BASE}

    @property
    def generator(self) -> Any:
        """The module to call generate()/forward() on: the PeftModel once a LoRA is loaded."""
        return self.base_model if self.peft_model is None else self.peft_model

    @property
    def has_lora(self) -> bool:
        return self.peft_model is not None

    def adapters(self) -> list[LoadedAdapter]:
        return list(self._by_path.values())

    def current(self, path: str | Path) -> LoadedAdapter | None:
        """The adapter at `path` if it is loaded and unchanged on disk (no model access: lock-free)."""
        resolved = Path(path).expanduser().resolve()
        adapter = self._by_path.get(resolved)
        return adapter if adapter is not None and adapter.fingerprint == _fingerprint(resolved) else None

    def ensure(self, path: str | Path, persona_id: str | None = None) -> LoadedAdapter:
        """The adapter at `path` (relative paths: to the working directory), loading it on first use.

        Raises AdapterError (naming the persona and the path) when it is missing, corrupt or made
        for another base model. A directory whose weights changed since loading is loaded afresh.
        """
        loaded = self.current(path)
        if loaded is not None:
            return loaded
        resolved = Path(path).expanduser().resolve()
        previous = self._by_path.get(resolved)
        fingerprint = _fingerprint(resolved)  # before reading: a write during the load triggers a reload
        spec = read_adapter(Path(path), persona_id)
        check_compatible(spec, self.base, self.base_model, persona_id)
        name = self._new_name(resolved)
        if spec.kind == "prompt":
            prompt = spec.tensors[PROMPT_KEY].to(self._dtype())
            adapter = LoadedAdapter(name, "prompt", resolved, prompt, fingerprint)
        else:
            self._load_lora(spec.path, name, persona_id)
            adapter = LoadedAdapter(name, "lora", resolved, None, fingerprint)
        if previous is not None:
            self._forget(previous)
        self._by_path[resolved] = adapter
        log.info("adapter %s (%s) loaded from %s", name, adapter.kind, path)
        return adapter

    def _dtype(self) -> Any:
        return self.base_model.get_input_embeddings().weight.dtype

    def _new_name(self, path: Path) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name) or "adapter"
        name, n = stem, 1
        while name in self._names:  # PEFT keys modules by adapter name: names must be unique
            n += 1
            name = f"{stem}-v{n}"
        self._names.add(name)
        return name

    def _load_lora(self, path: Path, name: str, persona_id: str | None) -> None:
        from peft import PeftModel

        try:
            if self.peft_model is None:
                with warnings.catch_warnings():
                    # peft 0.21 calls a transformers 5 property that warns of its own deprecation; the
                    # warning says nothing to the bot's user and would interleave with a console chat.
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                    self.peft_model = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=name)
                self.peft_model.eval()
            else:
                self.peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:  # PEFT raises anything from KeyError to RuntimeError on bad files
            self._names.discard(name)
            raise AdapterError(str(path), f"PEFT could not load it: {exc}", persona_id=persona_id) from exc

    def _forget(self, adapter: LoadedAdapter) -> None:
        # Called after its replacement is loaded, so the PeftModel always keeps at least one adapter.
        # A row built just before the swap names the deleted LoRA and fails that one generation.
        if adapter.kind == "lora":
            self.peft_model.delete_adapter(adapter.name)
        self._names.discard(adapter.name)
