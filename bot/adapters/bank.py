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

Many adapters: adapters stay on disk and are loaded on first use. At most `max_loaded_lora` LoRA
adapters are held in the PeftModel (least recently used beyond that are unloaded, except those that
`in_use()` names: rows still decoding with them); an unloaded adapter is loaded again on its next
use. Soft prompts are a few KiB each and stay loaded. So 1,000 LoRA personas cost the memory of the
few that are talking, plus one load (`load_seconds`) when a quiet one speaks again.

Not thread-safe: loading mutates the model. The caller (LocalRuntime) serializes `ensure` and
generation with one lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
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


@dataclass
class BankStats:
    loads: int = 0  # adapters read from disk (first use, after a change, after an eviction)
    evictions: int = 0  # LoRA adapters unloaded to stay within max_loaded_lora
    load_seconds: float = 0.0  # total time spent loading


class AdapterBank:
    def __init__(self, model: Any, base: BaseModelInfo, *, max_loaded_lora: int | None = None,
                 in_use: Callable[[], set[str]] | None = None) -> None:
        if any(hasattr(module, "lora_A") for module in model.modules()):
            # Another bank (or a training run) injected LoRA layers: a plain call would apply them.
            raise ValueError("this model already carries LoRA layers; use one AdapterBank per loaded model")
        if max_loaded_lora is not None and max_loaded_lora < 1:
            raise ValueError("max_loaded_lora must be >= 1")
        self.base_model = model
        self.base = base
        self.peft_model: Any = None
        self.max_loaded_lora = max_loaded_lora
        self.stats = BankStats()
        self._in_use = in_use or set
        self._by_path: OrderedDict[Path, LoadedAdapter] = OrderedDict()  # least recently used first
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
        if adapter is None or adapter.fingerprint != _fingerprint(resolved):
            return None
        with contextlib.suppress(KeyError):  # an eviction on the worker thread may race this; harmless
            self._by_path.move_to_end(resolved)  # recently used
        return adapter

    def ensure(self, path: str | Path, persona_id: str | None = None) -> LoadedAdapter:
        """The adapter at `path` (relative paths: to the working directory), loading it on first use.

        Raises AdapterError (naming the persona and the path) when it is missing, corrupt or made
        for another base model. A directory whose weights changed since loading is loaded afresh.
        """
        loaded = self.current(path)
        if loaded is not None:
            return loaded
        started = time.perf_counter()
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
            del self._by_path[resolved]
        self._by_path[resolved] = adapter
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started
        log.info("adapter %s (%s) loaded from %s", name, adapter.kind, path)
        if adapter.kind == "lora":
            self._evict(keep=adapter)
        return adapter

    def check(self, path: str | Path, persona_id: str | None = None) -> AdapterKind:
        """Validate the adapter at `path` without loading it into the model (AdapterError if unusable)."""
        spec = read_adapter(Path(path), persona_id)
        check_compatible(spec, self.base, self.base_model, persona_id)
        return spec.kind

    def has_room(self) -> bool:
        """Whether one more LoRA can be loaded without unloading another."""
        return self.max_loaded_lora is None or self.loaded_lora() < self.max_loaded_lora

    def loaded_lora(self) -> int:
        return sum(1 for a in self._by_path.values() if a.kind == "lora")

    def _evict(self, keep: LoadedAdapter) -> None:
        """Unload least recently used LoRA adapters beyond max_loaded_lora (never `keep`, never one in use)."""
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
            with warnings.catch_warnings():  # "Adapter X was active which is now deleted": expected here
                warnings.filterwarnings("ignore", message=".*was active which is now deleted", category=UserWarning)
                self.peft_model.delete_adapter(adapter.name)
            remaining = list(self.peft_model.peft_config)
            if self.peft_model.active_adapter not in remaining:
                # PEFT keeps pointing at the deleted adapter; its config lookups would raise KeyError.
                self.peft_model.set_adapter(remaining[-1])
        self._names.discard(adapter.name)


def _return_freed_memory() -> None:
    """Hand memory freed by unloaded adapters back to the OS (glibc keeps it in its arenas otherwise,
    so the process would stay as large as its busiest moment). No-op where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
