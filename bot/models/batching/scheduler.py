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

Supervision (faults never strand a reply):

* a fault that belongs to one row (its prompt fails to prefill, its scores are NaN, its LoRA was
  unloaded, its sampling or detokenizing raises) ends that row alone with a ModelError; the others
  keep decoding;
* a fault of the whole step (the batched forward pass, KV surgery) ends the rows of that step with a
  ModelError and resets the batch; the worker goes on with the next requests;
* anything that escapes the serving loop (a BaseException: the thread being killed) is caught by the
  supervisor around it: the rows it held fail, the loop restarts (at most `max_restarts` times per
  minute, then the scheduler is broken and every pending and future request fails at once);
* consumers never wait forever: RowStream asks `WorkerHealth` whenever nothing arrived for a while,
  so a dead or stuck worker ends every wait with a ModelError (see health.py).
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
from bot.models.batching.health import WorkerHealth
from bot.models.batching.kv import BatchState
from bot.models.batching.prefix_cache import PrefixCache
from bot.models.batching.rows import LIVENESS_POLL_S, Finished, FinishReason, Request, RowStream, Sink, SoftPrompt
from bot.models.batching.runner import runner_for
from bot.models.batching.sampling import Detokenizer, choose_tokens

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
    failed: int = 0  # rows ended by a fault (theirs or their step's)
    crashes: int = 0  # times the supervisor restarted a crashed worker loop


#: A crash that repeats this often within CRASH_WINDOW_S breaks the scheduler for good.
CRASH_WINDOW_S = 60.0


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
        stall_timeout_s: float = 180.0,
        max_restarts: int = 3,
        liveness_poll_s: float = LIVENESS_POLL_S,
        fast_decode: bool = True,
    ) -> None:
        """`model`: a transformers causal LM, or a model that serves itself (`batch_runner()`: the
        native Llama forward). `resolve_model`, if given, returns the transformers module to call at
        each step (an AdapterBank's generator becomes a PeftModel once the first LoRA is loaded).
        `stall_timeout_s`: a consumer gives up when the worker spent that long in one step.
        `max_restarts`: crashes of the worker loop survived per minute before the scheduler breaks.
        `fast_decode`: decode steps through `FastDecoder` where the model allows (False: transformers)."""
        if max_batch < 1 or max_queue < 0 or max_restarts < 0:
            raise ValueError("max_batch must be >= 1, max_queue and max_restarts >= 0")
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefix_cache = PrefixCache(prompt_cache_entries, prompt_cache_bytes) if prompt_cache else None
        self.stats = SchedulerStats()
        self._runner = runner_for(model, resolve_model, fast_decode=fast_decode)
        self._max_positions = self._runner.max_positions
        self._eos = self._runner.eos_ids(tokenizer)
        self._lock = model_lock if model_lock is not None else contextlib.nullcontext()
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[_Row] = []  # worker thread only; same order as the batch rows
        self._active_count = 0  # len(_active) as seen under _cond, for admission control
        self._batch = BatchState(self._runner.caches)
        self._admitting: list[Request] = []  # worker thread only: taken from the queue, not yet active
        self._health = WorkerHealth(stall_timeout_s)
        self._max_restarts = max_restarts
        self._poll_s = liveness_poll_s
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
                   prompt_cache_bytes=settings.prompt_cache_mb * 2**20,
                   stall_timeout_s=settings.stall_timeout_s, fast_decode=settings.fast_decode, **kwargs)

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
        Raises ModelBusy when the queue is full, PromptTooLong when the prompt leaves no room to reply,
        ModelError when the scheduler is closed or broken (its worker died).
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
            if self._health.dead() and self._health.broken is None:
                self._break("the local model's worker stopped unexpectedly; restart the bot")
            if self._health.broken is not None:
                raise ModelError(self._health.broken)
            free = max(0, self.max_batch - self._active_count)
            if len(self._waiting) >= self.max_queue + free:
                self.stats.rejected += 1
                raise ModelBusy(f"the local model is busy: {len(self._waiting)} requests are waiting "
                                f"(max_queue={self.max_queue}); try again in a moment")
            self._waiting.append(request)
            self._start_worker()
            self._cond.notify()
        return RowStream(request, self._health.problem, self._poll_s)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def active(self) -> int:
        with self._cond:
            return self._active_count

    def loras_in_use(self) -> set[str]:
        """LoRA names that queued or running rows need (must not be unloaded). Call with the model lock
        held (as the adapter bank does), so the worker is between steps."""
        with self._cond:
            held = [*self._waiting, *self._admitting, *(row.request for row in self._active)]
        return {request.lora for request in held if request.lora is not None}

    @property
    def broken(self) -> str | None:
        """Why the scheduler no longer serves (its worker died for good), or None."""
        return self._health.broken

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
            self._health.closed = True
            self._cond.notify_all()
            thread = self._health.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._abort_all(ModelError("the local model is shutting down"))  # a dead worker could not

    def _start_worker(self) -> None:
        """Start the worker thread on first use (under _cond)."""
        if self._health.thread is None:
            self._health.thread = threading.Thread(target=self._supervise, name="batch-generate", daemon=True)
            self._health.thread.start()

    def _break(self, reason: str) -> None:
        """The worker is gone for good: fail everything queued, and refuse what comes (under _cond)."""
        self._health.broken = reason
        log.critical("local model scheduler broken: %s", reason)
        waiting, self._waiting = list(self._waiting), deque()
        error = ModelError(reason)
        for request in waiting:
            request.fail(error)
        self._cond.notify_all()

    # -- worker side -------------------------------------------------------------------------

    def _supervise(self) -> None:
        """The worker thread: serve; if the serving loop itself crashes, fail what it held and restart."""
        crashes: deque[float] = deque()
        while True:
            try:
                self._serve()
                break
            except BaseException as exc:  # even SystemExit/KeyboardInterrupt aimed at this thread
                log.critical("the local model's worker crashed; its rows end with an error", exc_info=exc)
                now = time.monotonic()
                crashes.append(now)
                while crashes and now - crashes[0] > CRASH_WINDOW_S:
                    crashes.popleft()
                if len(crashes) > self._max_restarts:
                    with self._cond:
                        self._break(f"the local model's worker crashed ({len(crashes)}× within a minute; last: "
                                    f"{type(exc).__name__}: {exc}); restart the bot")
                    self._fail_held(exc)
                    return
                self.stats.crashes += 1
                self._fail_held(exc)
        self._abort_all(ModelError("the local model is shutting down"))

    def _serve(self) -> None:
        import torch

        with torch.inference_mode():
            while (admitted := self._next_admissions()) is not None:
                self._admitting = admitted
                self._health.step_started()
                try:
                    with self._lock:
                        self._step(admitted)
                except Exception as exc:  # a fault of the whole step: its rows end, the worker goes on
                    log.exception("a batch step failed; its %d rows end with an error",
                                  len(self._active) + len(self._admitting))
                    self._fail_held(exc)
                finally:  # (a BaseException leaves _admitting for the supervisor to fail)
                    self._health.step_ended()
                with self._cond:
                    self._active_count = len(self._active)

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
        self._retire([i for i, row in enumerate(self._active) if row.request.cancelled.is_set()])
        self._drop_orphans()
        if admitted:
            self._admit(admitted)
            self._admitting = []
        if self._active:
            self._decode()

    def _drop_orphans(self) -> None:
        """Rows whose LoRA was unloaded (a retrained adapter replaced it) would fail the whole batched
        forward pass: end them alone."""
        orphans = [i for i, row in enumerate(self._active) if not self._runner.has_adapter(row.request.lora)]
        for i in orphans:
            self._fail_row(self._active[i], ModelError(f"adapter {self._active[i].request.lora!r} was unloaded "
                                                       "while replying"))
        self._retire(orphans, already_ended=True)

    def _admit(self, requests: list[Request]) -> None:
        """Prefill new rows together, choose their first tokens, and merge the survivors into the batch."""
        started = time.perf_counter()
        for request in requests:
            request.admitted = started
        try:
            state, logits, cached = self._runner.prefill(requests, self.prefix_cache)
        except Exception as exc:
            if len(requests) > 1:  # find the culprit: the others deserve their replies
                for request in requests:
                    self._admit([request])
                return
            log.exception("prefill failed")
            self.stats.failed += 1
            requests[0].fail(exc)
            return
        finally:
            self.stats.prefill_s += time.perf_counter() - started
        survivors: list[int] = []
        chosen = choose_tokens(logits, [[] for _ in requests], [r.params for r in requests], self._generator)
        for i, request in enumerate(requests):
            row = _Row(request, self.tokenizer)
            row.cached = cached[i]
            self.stats.prefilled += request.prompt_positions - cached[i]
            self.stats.cached += cached[i]
            if not self._take(row, chosen[i]):
                survivors.append(i)
                self._active.append(row)
        state.keep_rows(survivors)
        self._batch.extend(state)
        self.stats.max_rows = max(self.stats.max_rows, len(self._active))

    def _decode(self) -> None:
        started = time.perf_counter()
        mask, positions = self._batch.step_inputs()
        loras = [row.request.lora for row in self._active]
        tokens = [row.pending for row in self._active]
        logits = self._runner.decode(self._batch.cache, loras, tokens, mask, positions)
        self._batch.advance(mask)
        self.stats.steps += 1
        self.stats.decoded += len(self._active)
        chosen = choose_tokens(logits, [row.generated for row in self._active],
                               [row.request.params for row in self._active], self._generator)
        done = [i for i, row in enumerate(self._active) if self._take(row, chosen[i])]
        self._retire(done, already_ended=True)
        self.stats.decode_s += time.perf_counter() - started

    def _take(self, row: _Row, token: int | Exception) -> bool:
        """Stream a row's chosen token; True when the row ended (finished, or failed alone)."""
        try:
            if isinstance(token, Exception):
                raise token
            return self._accept(row, token)
        except Exception as exc:  # this row's fault (NaN scores, a sampling or detokenizer error)
            log.exception("a reply failed; the other rows go on")
            self._fail_row(row, exc)
            return True

    def _fail_row(self, row: _Row, exc: BaseException) -> None:
        self.stats.failed += 1
        row.request.fail(exc)

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
        row.request.emit(text)

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
        if request.finish(result) and result is not None:
            self.stats.finished += 1

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

    def _fail_held(self, exc: BaseException) -> None:
        """End every row the worker holds (admitted or active) with an error and reset the batch."""
        held = [row.request for row in self._active] + self._admitting
        self._active, self._admitting = [], []
        self._batch = BatchState(self._runner.caches)
        with self._cond:
            self._active_count = 0
        self.stats.failed += sum(not request.ended for request in held)
        for request in held:
            request.fail(exc)

    def _abort_all(self, exc: ModelError) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.fail(exc)
        self._fail_held(exc)

