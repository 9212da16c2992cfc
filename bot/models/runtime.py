"""The local model's runtime: the loaded model (shared by every persona), its adapters, the scheduler.

`LocalRuntime` owns the one loaded model and its adapter bank: LoRA adapters and soft prompts of any
number of personas on top of that single copy. Streaming replies go through one BatchScheduler
(bot.models.batching, docs/performance.md): a worker thread decodes every pending conversation together
(continuous batching; each row with its own adapter, sampling, stop strings and length) and reuses the
KV state of each persona's hard prompt across turns. A full queue raises ModelBusy; a cancelled stream
(the consumer stopped reading) frees its row at the next step.

The model is either engine's (bot.models.local_loader): the native Llama forward with its
`NativeAdapterBank`, or a transformers model with the PEFT-based `AdapterBank`. Nothing here imports
LangChain, transformers or PEFT (LocalChatModel, in bot.models.local, is the LangChain face).

A persona with an adapter passes its adapter path (`adapter="adapters/pirate-lora"`); validate it
early with `ensure_adapter(persona_id, path)`, which raises AdapterError naming both.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bot.adapters import AdapterBank, BaseModelInfo, LoadedAdapter, Row, build_batch
from bot.domain.persona import GenerationParams
from bot.errors import ModelError
from bot.models.batching import BatchScheduler, Finished, SoftPrompt, chat_prefix_length
from bot.models.local_loader import LoadedModel
from bot.settings import ModelSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GenerationResult:
    prompt_tokens: int
    completion_tokens: int


def base_info(loaded: LoadedModel) -> BaseModelInfo:
    """What an adapter must have been made for: this model, by any of the names it goes by."""
    return BaseModelInfo.of(loaded.model, loaded.name, loaded.source.name,
                            str(getattr(loaded.model, "name_or_path", "")))


class LocalRuntime:
    """The shared local model, its adapters, and the batch scheduler that serves streaming replies."""

    def __init__(self, loaded: LoadedModel, settings: ModelSettings | None = None) -> None:
        self.loaded = loaded
        base = base_info(loaded)
        settings = settings or ModelSettings()
        self.native = loaded.engine == "native"
        # LoRA adapters beyond max_loaded_lora are unloaded least recently used first, except those that
        # queued or decoding rows still name; they load again on their next use.
        bank: Any = AdapterBank
        if self.native:
            from bot.models.native.adapters import NativeAdapterBank

            bank = NativeAdapterBank
        self.adapters = bank(loaded.model, base, max_loaded_lora=settings.max_loaded_lora, in_use=self._loras_in_use)
        # One model call at a time: loading an adapter rewires the shared modules, and PEFT installs
        # its per-row `adapter_names` hooks on those shared modules for the length of a generate().
        self._model_lock = threading.Lock()
        self._lock_timeout_s = settings.stall_timeout_s
        # Streaming replies: every conversation in one continuously batched decode loop. It holds the
        # lock one step at a time, so an adapter load waits for a step, not for a whole reply.
        self.scheduler = BatchScheduler.from_settings(
            loaded.model,
            loaded.tokenizer,
            settings,
            model_lock=self._model_lock,
            # transformers: the PeftModel once a LoRA is loaded (the native model holds its own LoRA)
            resolve_model=None if self.native else lambda: self.adapters.generator,
        )

    def _loras_in_use(self) -> set[str]:
        return self.scheduler.loras_in_use()

    @property
    def name(self) -> str:
        return self.loaded.name

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        encoded = self.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])

    def ensure_adapter(self, persona_id: str | None, adapter: str | Path) -> str:
        """Load (once) and validate a persona's adapter; returns its name in the bank.

        Raises AdapterError (a ModelLoadError) naming the persona and the adapter when the directory
        is missing, corrupt or made for another base model. Cheap and lock-free once loaded, so it
        may be called on every bind; the first load waits for a running generation to finish.
        """
        return self._adapter(persona_id, adapter).name

    def check_adapter(self, persona_id: str | None, adapter: str | Path) -> None:
        """Validate a persona's adapter at start-up: load it while the bank has room for more LoRA
        adapters (soft prompts always), beyond that only read and check it (it loads on first use),
        so a thousand LoRA personas start in seconds. Raises AdapterError like `ensure_adapter`."""
        if self.adapters.current(adapter) is not None:
            return
        if self.adapters.check(adapter, persona_id) == "prompt" or self.adapters.has_room():
            self._adapter(persona_id, adapter)

    def _adapter(self, persona_id: str | None, adapter: str | Path) -> LoadedAdapter:
        loaded = self.adapters.current(adapter)
        if loaded is None:
            # Bounded: a worker stuck in one step must not hold this request (and its caller) forever.
            if not self._model_lock.acquire(timeout=self._lock_timeout_s):
                raise ModelError(f"the local model stayed busy for {self._lock_timeout_s:.0f} s; "
                                 f"could not load adapter {adapter}")
            try:
                loaded = self.adapters.ensure(adapter, persona_id)
            finally:
                self._model_lock.release()
        return loaded

    def row(self, messages: list[dict[str, str]], adapter: str | Path | None = None) -> Row:
        """One batch row for `generate_rows` (transformers engine): the chat prompt's tokens plus the
        (loaded) adapter it runs with."""
        return Row(self.encode_chat(messages), None if adapter is None else self._adapter(None, adapter))

    def _generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.loaded.tokenizer.pad_token_id,
            # generate()'s own penalty, fed embeddings with left padding, skips the first <padding>
            # generated tokens of padded rows (and warns). Ours penalizes exactly each reply's tokens,
            # the same alone or in any batch.
            "repetition_penalty": 1.0,
        }
        if params.repetition_penalty != 1.0:
            penalty = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
            kwargs["logits_processor"] = LogitsProcessorList([penalty])
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        return kwargs

    def generate_rows(
        self,
        rows: list[Row],
        params: GenerationParams,
        *,
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> list[list[int]]:
        """Generate for a batch of rows (each with its own adapter, or none) with transformers' generate();
        the new tokens per row, up to and including the end-of-turn token. Blocking: call it from a
        worker thread. Transformers engine only (the native engine serves through the scheduler)."""
        if self.native:
            raise ModelError("generate_rows needs the transformers engine; the native engine streams via stream()")
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel is not None and cancel.is_set()

        with self._model_lock, torch.inference_mode():
            output = self.adapters.generator.generate(
                **build_batch(self.adapters, rows),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Cancelled()]),
                **self._generate_kwargs(params),
            )
        return [self._until_end(tokens.tolist()) for tokens in output]

    def _until_end(self, tokens: list[int]) -> list[int]:
        # Finished rows are padded with pad_token_id (== the end token for SmolLM2): cut after the first end.
        end = self.loaded.model.generation_config.eos_token_id
        ends = set(end if isinstance(end, list) else [end]) | {self.loaded.tokenizer.eos_token_id}
        for i, token in enumerate(tokens):
            if token in ends:
                return tokens[: i + 1]
        return tokens

    async def stream(
        self,
        messages: list[dict[str, str]],
        params: GenerationParams,
        adapter: str | Path | None = None,
        *,
        prefix_messages: int = 1,
        cache_tag: str = "",
    ) -> AsyncGenerator[str | GenerationResult, None]:
        """Yield text pieces as they are decoded, then one GenerationResult.

        `adapter`: the persona's adapter path (LoRA or soft prompt), or None for the plain model.
        `prefix_messages`: how many leading messages are the persona's hard prompt (system prompt +
        few-shot examples): their KV state is cached and reused by every turn that starts with them.
        `cache_tag`: the persona id, so that a persona reload can drop its cached prompts.
        Raises ModelBusy when the generation queue is full.
        """
        loaded_adapter = None
        if adapter is not None:
            loaded_adapter = self.adapters.current(adapter)
            if loaded_adapter is None:  # first use: loading waits for the model lock, off the event loop
                loaded_adapter = await asyncio.to_thread(self._adapter, None, adapter)
        ids = self.encode_chat(messages)
        lora = soft = None
        if loaded_adapter is not None and loaded_adapter.kind == "lora":
            lora = loaded_adapter.name
        elif loaded_adapter is not None:
            soft = SoftPrompt(loaded_adapter.name, loaded_adapter.prompt)
        rows = self.scheduler.submit(
            ids,
            params,
            lora=lora,
            soft_prompt=soft,
            prefix_len=chat_prefix_length(self.loaded.tokenizer, messages, prefix_messages, ids),
            cache_tag=cache_tag,
        )
        async with rows:  # leaving early (cancelled, a stop string seen by the caller) frees the row
            async for item in rows:
                if isinstance(item, Finished):
                    yield GenerationResult(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens)
                else:
                    yield item

    def generate_blocking(
        self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | Path | None = None
    ) -> tuple[str, GenerationResult]:
        """One whole reply, blocking (LangChain's synchronous invoke): transformers' generate() on the
        transformers engine, the batch scheduler on the native one."""
        if self.native:
            return _run_blocking(self._collect(messages, params, adapter))
        row = self.row(messages, adapter)
        new = self.generate_rows([row], params)[0]
        text = self.loaded.tokenizer.decode(new, skip_special_tokens=True)
        return text, GenerationResult(row.prompt_tokens, len(new))

    async def _collect(self, messages: list[dict[str, str]], params: GenerationParams,
                       adapter: str | Path | None) -> tuple[str, GenerationResult]:
        pieces: list[str] = []
        async for item in self.stream(messages, params, adapter, prefix_messages=0):
            if isinstance(item, GenerationResult):
                return "".join(pieces), item
            pieces.append(item)
        raise ModelError("the reply ended without a result")

    def close(self) -> None:
        self.scheduler.close()


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code (on a helper thread when this thread already
    runs an event loop, which asyncio.run refuses)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
