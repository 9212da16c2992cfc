"""AdapterLru: the bookkeeping every adapter bank shares, whatever holds the weights.

Adapters stay on disk and are loaded on first use, keyed by their resolved directory. At most
`max_loaded_lora` LoRA adapters stay loaded (least recently used beyond that are unloaded, except
those that `in_use()` names: rows still decoding with them); an unloaded adapter is loaded again on
its next use, and one whose weights file changed on disk is loaded afresh. Soft prompts are a few
KiB each and stay loaded.

Subclasses say how weights get in and out of their model: `_soft_prompt` (the tensor a prompt row
prepends), `_load_lora` (register a LoRA under a unique name) and `_unload_lora`; `_check` may add
their own limits to `check_compatible`. `AdapterBank` (PEFT) and `NativeAdapterBank` (the native
forward) are the two.

Not thread-safe: loading mutates the model. The caller (LocalRuntime) serializes `ensure` and
generation with one lock; only `current` is safe to call concurrently.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.adapters.spec import (
    PROMPT_KEY,
    WEIGHTS_FILE,
    AdapterKind,
    AdapterSpec,
    BaseModelInfo,
    check_compatible,
    read_adapter,
)

log = logging.getLogger(__name__)

#: The name of "no LoRA on this row" in a mixed batch (PEFT's own), never given to an adapter.
BASE = "__base__"


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    kind: AdapterKind
    path: Path
    #: The soft prompt, [virtual_tokens, hidden] (None for LoRA).
    prompt: Any = None
    #: (mtime_ns, size) of the weights file when loaded: a retrained adapter is reloaded.
    fingerprint: tuple[int, int] = (0, 0)

    @property
    def virtual_tokens(self) -> int:
        return 0 if self.prompt is None else int(self.prompt.shape[0])


@dataclass
class BankStats:
    loads: int = 0  # adapters read from disk (first use, after a change, after an eviction)
    evictions: int = 0  # LoRA adapters unloaded to stay within max_loaded_lora
    load_seconds: float = 0.0  # total time spent loading


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        stat = (path / WEIGHTS_FILE).stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


class AdapterLru:
    #: Whether `check` reads the tensors too (a corrupt body fails), or only the config and headers.
    check_reads_weights = True

    def __init__(self, model: Any, base: BaseModelInfo, *, max_loaded_lora: int | None = None,
                 in_use: Callable[[], set[str]] | None = None) -> None:
        if max_loaded_lora is not None and max_loaded_lora < 1:
            raise ValueError("max_loaded_lora must be >= 1")
        self.base_model = model
        self.base = base
        self.max_loaded_lora = max_loaded_lora
        self.stats = BankStats()
        self._in_use = in_use or set
        self._by_path: OrderedDict[Path, LoadedAdapter] = OrderedDict()  # least recently used first
        self._names: set[str] = {BASE}

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
        self._check(spec, persona_id)
        name = self._new_name(resolved)
        if spec.kind == "prompt":
            adapter = LoadedAdapter(name, "prompt", resolved, self._soft_prompt(spec.tensors[PROMPT_KEY]), fingerprint)
        else:
            try:
                self._load_lora(spec, name, persona_id)
            except BaseException:
                self._names.discard(name)
                raise
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
        spec = read_adapter(Path(path), persona_id, load_weights=self.check_reads_weights)
        self._check(spec, persona_id)
        return spec.kind

    def has_room(self) -> bool:
        """Whether one more LoRA can be loaded without unloading another."""
        return self.max_loaded_lora is None or self.loaded_lora() < self.max_loaded_lora

    def loaded_lora(self) -> int:
        return sum(1 for a in self._by_path.values() if a.kind == "lora")

    # -- what a subclass provides ------------------------------------------------------------------

    def _check(self, spec: AdapterSpec, persona_id: str | None) -> None:
        check_compatible(spec, self.base, self.base_model, persona_id)

    def _soft_prompt(self, tensor: Any) -> Any:
        """The soft prompt as rows will prepend it (dtype, layout)."""
        raise NotImplementedError

    def _load_lora(self, spec: AdapterSpec, name: str, persona_id: str | None) -> None:
        """Register the LoRA under `name` (AdapterError when its weights cannot be used)."""
        raise NotImplementedError

    def _unload_lora(self, name: str) -> None:
        raise NotImplementedError

    # -- the LRU -----------------------------------------------------------------------------------

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

    def _forget(self, adapter: LoadedAdapter) -> None:
        if adapter.kind == "lora":
            self._unload_lora(adapter.name)
        self._names.discard(adapter.name)

    def _new_name(self, path: Path) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name) or "adapter"
        name, n = stem, 1
        while name in self._names:  # models key adapters by name: names must be unique
            n += 1
            name = f"{stem}-v{n}"
        self._names.add(name)
        return name


def _return_freed_memory() -> None:
    """Hand memory freed by unloaded adapters back to the OS (glibc keeps it in its arenas otherwise,
    so the process would stay as large as its busiest moment). No-op where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
