"""Continuous batching for the local model: one worker thread decodes every conversation together.

    scheduler = BatchScheduler(model, tokenizer, max_batch=8, max_queue=32)
    async with scheduler.submit(input_ids, params, lora="pirate", prefix_len=120) as stream:
        async for item in stream:      # text pieces, then one Finished
            ...

Each worker step: (1) drop rows whose consumer went away, (2) admit waiting requests up to
`max_batch` -- prefill each alone (its persona prefix from the prompt cache when possible), choose its
first token and merge its KV into the running batch, (3) run ONE forward pass for every active row
(each with its own LoRA, position ids and padding mask), (4) choose each row's next token with its
own sampling parameters, stream its text, and retire rows that hit end-of-turn, a stop string or
their max length. New requests therefore start at the next step instead of waiting for the batch.

A full queue raises ModelBusy at submit, before anything is queued. The worker holds `model_lock`
for one step at a time, so loading an adapter waits for a step, not for a whole reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.domain.persona import GenerationParams
from bot.domain.stops import StopScanner
from bot.errors import ModelBusy, ModelError, PromptTooLong
from bot.models.batching import forward
from bot.models.batching.kv import BatchState
from bot.models.batching.prefix_cache import PrefixCache
from bot.models.batching.rows import Finished, FinishReason, Request, RowStream, Sink, SoftPrompt, end_of_stream
from bot.models.batching.sampling import Detokenizer, next_token

log = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    steps: int = 0  # batched decode steps
    decoded: int = 0  # tokens chosen in decode steps (over all rows)
    prefilled: int = 0  # prompt positions run through the model
    cached: int = 0  # prompt tokens served from the prompt cache
    finished: int = 0
    rejected: int = 0
    max_rows: int = 0  # the largest batch seen
    prefill_s: float = 0.0  # seconds in prefill forward passes
    decode_s: float = 0.0  # seconds in batched decode steps (forward + sampling + streaming)


class _Row:
    """Worker-side state of one admitted request."""

    def __init__(self, request: Request, tokenizer: Any) -> None:
        self.request = request
        self.generated: list[int] = []
        self.detok = Detokenizer(tokenizer)
        self.scanner = StopScanner(request.params.stop)
        self.pending = -1  # the last chosen token, fed at the next decode step
        self.cached = 0
        self.first_token_at: float | None = None


class BatchScheduler:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        max_queue: int = 32,
        prompt_cache: bool = True,
        prompt_cache_entries: int = 64,
        prompt_cache_bytes: int = 512 * 2**20,
        model_lock: threading.Lock | None = None,
        resolve_model: Callable[[], Any] | None = None,
        seed: int | None = None,
    ) -> None:
        """`resolve_model`, if given, returns the module to call at each step (an AdapterBank's
        generator becomes a PeftModel once the first LoRA is loaded); otherwise `model` is used."""
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefix_cache = PrefixCache(prompt_cache_entries, prompt_cache_bytes) if prompt_cache else None
        self.stats = SchedulerStats()
        self._resolve = resolve_model or (lambda: model)
        base = forward.base_of(model)
        self._config = base.config
        self._max_positions = int(getattr(base.config, "max_position_embeddings", 2048) or 2048)
        self._eos = _eos_ids(base, tokenizer)
        self._lock = model_lock if model_lock is not None else contextlib.nullcontext()
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[_Row] = []  # worker thread only; same order as the batch rows
        self._active_count = 0  # len(_active) as seen under _cond, for admission control
        self._batch = BatchState(self._config)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._generator: Any = None
        if seed is not None:
            import torch

            self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_settings(cls, model: Any, tokenizer: Any, settings: Any, **kwargs: Any) -> BatchScheduler:
        """Build from a `bot.settings.ModelSettings`."""
        return cls(model, tokenizer, max_batch=settings.max_batch, max_queue=settings.max_queue,
                   prompt_cache=settings.prompt_cache, prompt_cache_entries=settings.prompt_cache_entries,
                   prompt_cache_bytes=settings.prompt_cache_mb * 2**20, **kwargs)

    # -- event-loop side ---------------------------------------------------------------------

    def submit(
        self,
        input_ids: Sequence[int],
        params: GenerationParams,
        *,
        lora: str | None = None,
        soft_prompt: SoftPrompt | None = None,
        prefix_len: int = 0,
        cache_tag: str = "",
    ) -> RowStream:
        """Queue one reply; returns its stream. Call from a running event loop.

        `lora`: the LoRA adapter's name in the PeftModel (None: the base model). `prefix_len`: how
        many leading tokens are the persona's hard prompt, worth caching (0: none). `cache_tag`: a
        label for the prompt cache (the persona id) so `invalidate(tag)` can drop its entries.
        Raises ModelBusy when the queue is full, PromptTooLong when the prompt leaves no room to reply.
        """
        if not input_ids:
            raise ValueError("a request needs at least one prompt token")
        request = Request(list(input_ids), params, params.max_new_tokens, Sink(asyncio.get_running_loop()),
                          lora=lora, soft_prompt=soft_prompt, cache_tag=cache_tag,
                          prefix_len=max(0, min(prefix_len, len(input_ids) - 1)))
        room = self._max_positions - request.prompt_positions
        if room < 1:
            raise PromptTooLong(request.prompt_positions + 1, self._max_positions)
        request.max_new_tokens = min(request.max_new_tokens, room)
        with self._cond:
            if self._closed:
                raise ModelError("the local model is shutting down")
            free = max(0, self.max_batch - self._active_count)
            if len(self._waiting) >= self.max_queue + free:
                self.stats.rejected += 1
                raise ModelBusy(f"the local model is busy: {len(self._waiting)} requests are waiting "
                                f"(max_queue={self.max_queue}); try again in a moment")
            self._waiting.append(request)
            self._start_worker()
            self._cond.notify()
        return RowStream(request)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def active(self) -> int:
        with self._cond:
            return self._active_count

    def invalidate(self, cache_tag: str | None = None) -> None:
        """Forget cached persona prompts: all, or those stored under one tag (after a persona reload)."""
        if self.prefix_cache is not None:
            if cache_tag is None:
                self.prefix_cache.clear()
            else:
                self.prefix_cache.invalidate(cache_tag)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker; rows still queued or running end with a ModelError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _start_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="batch-generate", daemon=True)
            self._thread.start()

    # -- worker side -------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while (admitted := self._next_admissions()) is not None:
                with self._lock:
                    self._step(admitted)
                with self._cond:
                    self._active_count = len(self._active)
        self._abort_all(ModelError("the local model is shutting down"))

    def _next_admissions(self) -> list[Request] | None:
        """Wait for work; take as many waiting requests as there are free rows (None: closing)."""
        with self._cond:
            while not self._closed and not self._waiting and not self._active:
                self._cond.wait()
            if self._closed:
                return None
            admitted: list[Request] = []
            while self._waiting and len(self._active) + len(admitted) < self.max_batch:
                request = self._waiting.popleft()
                if request.cancelled.is_set():
                    self._end(request, None)
                    continue
                admitted.append(request)
            self._active_count = len(self._active) + len(admitted)
            return admitted

    def _step(self, admitted: list[Request]) -> None:
        model = self._resolve()
        self._retire([i for i, row in enumerate(self._active) if row.request.cancelled.is_set()])
        if admitted:
            self._admit(model, admitted)
        if self._active:
            try:
                self._decode(model)
            except Exception as exc:  # a broken step must not take the worker (or other requests) down
                log.exception("batched decode step failed")
                self._fail_active(exc)

    def _admit(self, model: Any, requests: list[Request]) -> None:
        """Prefill new rows together, choose their first tokens, and merge the survivors into the batch."""
        started = time.perf_counter()
        for request in requests:
            request.admitted = started
        try:
            state, logits, cached = forward.prefill(model, requests, self.prefix_cache)
        except Exception as exc:
            if len(requests) > 1:  # find the culprit: the others deserve their replies
                for request in requests:
                    self._admit(model, [request])
                return
            log.exception("prefill failed")
            requests[0].fail(exc)
            return
        finally:
            self.stats.prefill_s += time.perf_counter() - started
        survivors: list[int] = []
        for i, request in enumerate(requests):
            row = _Row(request, self.tokenizer)
            row.cached = cached[i]
            self.stats.prefilled += request.prompt_positions - cached[i]
            self.stats.cached += cached[i]
            if not self._accept(row, self._choose(row, logits[i])):
                survivors.append(i)
                self._active.append(row)
        state.keep_rows(survivors)
        self._batch.extend(state)
        self.stats.max_rows = max(self.stats.max_rows, len(self._active))

    def _decode(self, model: Any) -> None:
        import torch

        started = time.perf_counter()
        mask, positions = self._batch.step_inputs()
        tokens = torch.tensor([[row.pending] for row in self._active], dtype=torch.long)
        logits = forward.call(model, self._batch.cache, [row.request.lora for row in self._active],
                              input_ids=tokens, attention_mask=mask, position_ids=positions)
        self._batch.advance(mask)
        self.stats.steps += 1
        self.stats.decoded += len(self._active)
        done = [i for i, row in enumerate(self._active) if self._accept(row, self._choose(row, logits[i]))]
        self._retire(done, already_ended=True)
        self.stats.decode_s += time.perf_counter() - started

    def _choose(self, row: _Row, logits: Any) -> int:
        return next_token(logits, row.generated, row.request.params, self._generator)

    def _accept(self, row: _Row, token: int) -> bool:
        """Take a chosen token: stream its text; True when the row is finished (and ended)."""
        row.pending = token
        row.generated.append(token)
        if row.first_token_at is None:
            row.first_token_at = time.perf_counter()
        reason: FinishReason | None = None
        if token in self._eos:
            reason = "eos"
        else:
            self._emit(row, row.scanner.feed(row.detok.push(token)))
            if row.scanner.stopped:
                reason = "stop"
            elif len(row.generated) >= row.request.max_new_tokens:
                reason = "length"
        if reason is None:
            return False
        if reason != "stop":
            self._emit(row, row.scanner.feed(row.detok.flush()) + row.scanner.flush())
        self._end(row.request, self._result(row, reason))
        return True

    def _emit(self, row: _Row, text: str) -> None:
        if text and not row.request.sink.put(text):
            row.request.cancelled.set()

    def _result(self, row: _Row, reason: FinishReason) -> Finished:
        request = row.request
        return Finished(
            prompt_tokens=request.prompt_positions,
            completion_tokens=len(row.generated),
            finish_reason=reason,
            cached_tokens=row.cached,
            queued_s=(request.admitted or request.submitted) - request.submitted,
            first_token_s=None if row.first_token_at is None else row.first_token_at - request.submitted,
            token_ids=tuple(row.generated),
        )

    def _end(self, request: Request, result: Finished | None) -> None:
        if result is not None:
            request.sink.put(result)
            self.stats.finished += 1
        request.sink.put(end_of_stream())

    def _retire(self, indices: list[int], *, already_ended: bool = False) -> None:
        """Remove these active rows (ending them as cancelled unless they ended already)."""
        if not indices:
            return
        gone = set(indices)
        if not already_ended:
            for i in indices:
                self._end(self._active[i].request, None)
        keep = [i for i in range(len(self._active)) if i not in gone]
        self._batch.keep_rows(keep)
        self._active = [self._active[i] for i in keep]

    def _fail_active(self, exc: BaseException) -> None:
        for row in self._active:
            row.request.fail(exc)
        self._active = []
        self._batch = BatchState(self._config)

    def _abort_all(self, exc: ModelError) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.fail(exc)
        self._fail_active(exc)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
