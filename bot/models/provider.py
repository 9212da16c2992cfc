"""Bind personas to chat models: local transformers, an OpenAI-compatible server, or scripted.

The local model is loaded once per process and shared by every persona (each persona only adds
its generation parameters). Remote and scripted models are cheap and cached per persona.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bot.adapters import AdapterError, read_adapter
from bot.domain.persona import Persona
from bot.errors import ConfigError
from bot.models.local_loader import load_for_serving
from bot.models.runtime import LocalRuntime
from bot.models.tokens import approx_token_count
from bot.ports import BoundModel
from bot.settings import Backend, ModelSettings

if TYPE_CHECKING:
    from langchain_core.language_models.chat_models import BaseChatModel

log = logging.getLogger(__name__)

REMOTE_CONTEXT = 8192
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@functools.lru_cache(maxsize=256)
def _fingerprint(directory: Path, mtimes: tuple[float, ...]) -> str:
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = directory / name
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def adapter_hash(adapter: str | None) -> str | None:
    """Short content hash of an adapter directory (cached until its files change)."""
    if adapter is None:
        return None
    directory = Path(adapter)
    mtimes = tuple((directory / n).stat().st_mtime if (directory / n).exists() else 0.0 for n in ADAPTER_FILES)
    return _fingerprint(directory, mtimes) if any(mtimes) else None


class DefaultModelProvider:
    """`adapters_dir`: where personas' adapters live; the local engine is chosen knowing them (a LoRA
    that only PEFT computes exactly makes the whole local model run on transformers)."""

    def __init__(self, settings: ModelSettings, data_dir: Path, *, runtime: LocalRuntime | None = None,
                 adapters_dir: Path | None = None) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.adapters_dir = adapters_dir
        self._runtime = runtime
        self._runtime_lock = threading.Lock()
        self._cache: dict[tuple[object, ...], BaseChatModel] = {}
        self._loading: threading.Thread | None = None

    def backend_of(self, persona: Persona) -> Backend:
        return persona.model.backend or self.settings.backend

    # -- local -------------------------------------------------------------------------------

    def local_runtime(self) -> LocalRuntime:
        with self._runtime_lock:
            if self._runtime is None:
                loaded = load_for_serving(self.settings, self.data_dir, self.adapters_dir)
                log.info("loaded %s (%s engine, %s weights) in %.1fs (cached: %s)", loaded.name, loaded.engine,
                         loaded.weights, loaded.load_seconds, loaded.from_cache)
                self._runtime = LocalRuntime(loaded, self.settings)
            return self._runtime

    def start_loading(self) -> None:
        """Load the local model on a background thread now (imports included), so that it loads while
        the caller starts everything else; `local_runtime()` and `warm_up()` wait for it. A failure is
        only logged here: the next `local_runtime()` tries again and raises it to its caller."""
        if self._loading is not None or self._runtime is not None:
            return

        def load() -> None:
            try:
                self.local_runtime()
            except Exception as exc:  # raised again, to someone who can report it, by the next call
                log.debug("background model load failed: %s", exc)

        self._loading = threading.Thread(target=load, name="model-load", daemon=True)
        self._loading.start()

    async def warm_up(self, personas: list[Persona]) -> None:
        """Load the local model off the event loop before the first message needs it."""
        if any(self.backend_of(p) == "local" for p in personas):
            await asyncio.to_thread(self.local_runtime)

    def clear_cache(self) -> None:
        """Forget per-persona models and cached persona prompts (after a persona reload)."""
        self._cache.clear()
        if self._runtime is not None:
            self._runtime.scheduler.invalidate()

    # -- binding -----------------------------------------------------------------------------

    def bind(self, persona: Persona) -> BoundModel:
        backend = self.backend_of(persona)
        if backend == "local":
            runtime = self.local_runtime()
            # The adapter itself is loaded in the generation worker (never on the event loop);
            # check_adapters() validated (and so loaded) it at start-up.
            loaded = runtime.adapters.current(persona.adapter) if persona.adapter else None
            virtual_tokens = loaded.virtual_tokens if loaded is not None else 0  # a soft prompt's positions
            from bot.models.local import LocalChatModel  # LangChain: only once a persona is bound

            return BoundModel(
                chat_model=LocalChatModel(
                    runtime=runtime,
                    params=persona.generation,
                    adapter=persona.adapter,
                    prefix_messages=1 + 2 * len(persona.examples),  # system prompt + few-shot examples
                    cache_tag=persona.id,
                ),
                backend="local",
                model_name=runtime.name,
                adapter=persona.adapter,
                context_window=runtime.loaded.context_window - virtual_tokens,
                count_tokens=runtime.count_tokens,
                adapter_hash=adapter_hash(persona.adapter),
            )
        # A variant changes generation and adapter under the same id and version: key on them too.
        key = (persona.id, persona.version, persona.generation, persona.adapter)
        if backend == "openai":
            name = self.served_name(persona)
            model = self._cache.get(key) or self._cache.setdefault(key, self._openai(persona, name))
            return BoundModel(model, "openai", name, persona.adapter, self.settings.context_window or REMOTE_CONTEXT,
                              approx_token_count, adapter_hash(persona.adapter))
        from bot.models.scripted import ScriptedChatModel

        model = self._cache.get(key) or self._cache.setdefault(key, ScriptedChatModel(persona_name=persona.name))
        return BoundModel(model, "scripted", "scripted", persona.adapter, self.settings.context_window or 4096,
                          approx_token_count, adapter_hash(persona.adapter))

    def served_name(self, persona: Persona) -> str:
        """The remote model name: a LoRA adapter is served by vLLM under its directory name
        (`--lora-modules NAME=adapters/NAME`); soft prompts cannot be served remotely."""
        if persona.adapter is None:
            return persona.model.name or self.settings.openai_model
        spec = read_adapter(Path(persona.adapter), persona.id)
        if spec.kind == "prompt":
            raise AdapterError(persona.adapter, "soft prompts cannot be served by an OpenAI-compatible server "
                               "(vLLM serves LoRA only); use the local backend for this persona",
                               persona_id=persona.id)
        return Path(persona.adapter).name

    async def check_adapters(self, personas: list[Persona]) -> dict[str, str]:
        """Validate every persona's adapters (variants' too) off the event loop.

        Returns {persona id: reason} for the personas that cannot be served as written.
        """
        failures: dict[str, str] = {}
        for persona in personas:
            backend = self.backend_of(persona)
            for variant in [persona, *(persona.with_variant(v.id) for v in persona.variants)]:
                if variant.adapter is None or backend == "scripted":
                    continue
                try:
                    if backend == "local":
                        await asyncio.to_thread(self.local_runtime().check_adapter, persona.id, variant.adapter)
                    else:
                        await asyncio.to_thread(self.served_name, variant)
                except AdapterError as exc:
                    failures[persona.id] = str(exc)
                    break
        return failures

    def _openai(self, persona: Persona, name: str) -> BaseChatModel:
        from langchain_openai import ChatOpenAI

        base_url = persona.model.base_url or self.settings.openai_base_url
        if base_url is None and self.settings.openai_api_key.get_secret_value() == "not-needed":
            raise ConfigError(f"persona {persona.id} uses the openai backend: set BOT_MODEL__OPENAI_BASE_URL "
                              "and/or BOT_MODEL__OPENAI_API_KEY")
        params = persona.generation
        # repetition_penalty is not an OpenAI parameter; self-hosted servers (vLLM) accept it.
        extra = {"repetition_penalty": params.repetition_penalty} if base_url else None
        return ChatOpenAI(
            model=name,
            base_url=base_url,
            api_key=self.settings.openai_api_key,
            temperature=params.temperature,
            top_p=params.top_p,
            max_completion_tokens=params.max_new_tokens,
            stop_sequences=list(params.stop) or None,
            stream_usage=True,
            timeout=self.settings.request_timeout,
            max_retries=1,
            extra_body=extra,
        )

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
