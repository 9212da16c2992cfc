"""Supervision of the batch worker with the real SmolLM2: faults are injected inside the worker thread
(a hook that raises in a forward pass, NaN scores, SystemExit delivered to the thread, a step that
hangs) and every reply either completes exactly as it would alone or ends with a ModelError, promptly;
the scheduler then serves the next request."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from bot.domain.persona import GenerationParams
from bot.errors import ModelError
from bot.models.batching import BatchScheduler, Finished, RowStream, SoftPrompt
from bot.models.local_loader import LoadedModel
from tests.rows import collect as finished
from tests.rows import encode

pytestmark = pytest.mark.model

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=8, repetition_penalty=1.0)
LONG = GREEDY.model_copy(update={"max_new_tokens": 48})
QUESTIONS = ["What is the capital of France?", "Name three colours.", "How do I boil an egg?"]
WAIT_S = 60.0  # every wait in these tests has an end


async def collect(stream: RowStream) -> Finished:
    return await finished(stream, WAIT_S)


async def outcome(stream: RowStream) -> Finished | ModelError:
    try:
        return await collect(stream)
    except ModelError as exc:
        return exc


@contextlib.contextmanager
def scheduler(loaded: LoadedModel, **kwargs: Any) -> Iterator[BatchScheduler]:
    s = BatchScheduler(loaded.model, loaded.tokenizer, **kwargs)
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def hooked(module: torch.nn.Module, hook: Callable[..., Any], *, pre: bool = False) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def prompts(local_model: LoadedModel) -> list[list[int]]:
    return [encode(local_model, q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def alone(local_model: LoadedModel, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    async def run() -> list[tuple[int, ...]]:
        with scheduler(local_model, max_batch=1) as s:
            return [(await collect(s.submit(ids, GREEDY))).token_ids for ids in prompts]

    return asyncio.run(run())


def embeddings(loaded: LoadedModel) -> torch.nn.Module:
    return loaded.model.get_input_embeddings()


async def all_active(s: BatchScheduler, rows: int) -> None:
    for _ in range(int(WAIT_S / 0.01)):  # the worker admits between steps; bounded wait
        if s.active >= rows and s.stats.max_rows >= rows:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{rows} rows never ran together")


async def served_next(s: BatchScheduler, prompts: list[list[int]], alone: list[tuple[int, ...]]) -> None:
    """After a fault the scheduler still answers, exactly as before."""
    assert (await collect(s.submit(prompts[0], GREEDY))).token_ids == alone[0]


async def test_a_prompt_that_fails_at_admission_fails_alone(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]]
) -> None:
    poison = next(t for t in prompts[1] if all(t not in ids for ids in (prompts[0], prompts[2], *alone)))

    def refuse(module: Any, args: tuple[Any, ...]) -> None:
        if poison in args[0].flatten().tolist():
            raise RuntimeError("injected prefill fault")

    with scheduler(local_model, max_batch=8) as s, hooked(embeddings(local_model), refuse, pre=True):
        running = s.submit(prompts[0], GREEDY)
        head = await asyncio.wait_for(running.__anext__(), WAIT_S)  # row 0 is decoding when the others join
        assert isinstance(head, str)
        results = await asyncio.gather(outcome(s.submit(prompts[1], GREEDY)), outcome(s.submit(prompts[2], GREEDY)),
                                       outcome(running))
        assert isinstance(results[0], ModelError) and "injected prefill fault" in str(results[0])
        assert [r.token_ids for r in results[1:] if isinstance(r, Finished)] == [alone[2], alone[0]]
        assert s.stats.failed == 1
        await served_next(s, prompts, alone)


async def test_a_decode_step_that_raises_fails_its_rows_and_the_worker_goes_on(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]]
) -> None:
    armed = threading.Event()

    def explode(module: Any, args: tuple[Any, ...]) -> None:
        if armed.is_set():  # armed once every row is admitted: the next forward pass is a decode step
            armed.clear()
            raise RuntimeError("injected decode fault")

    stories = [encode(local_model, f"Write a long story about {topic}.") for topic in ("a dragon", "the sea", "a cat")]
    layer = local_model.model.model.layers[0].mlp.down_proj
    with scheduler(local_model, max_batch=8) as s, hooked(layer, explode, pre=True):
        streams = [s.submit(ids, LONG) for ids in stories]  # long replies: none ends before the fault
        await all_active(s, 3)
        armed.set()
        results = await asyncio.gather(*(outcome(stream) for stream in streams))
        assert all(isinstance(r, ModelError) and "injected decode fault" in str(r) for r in results), results
        assert s.stats.failed == 3 and s.active == 0
        await served_next(s, prompts, alone)


@pytest.mark.parametrize("params", [GREEDY, GenerationParams(temperature=0.9, top_p=0.9, max_new_tokens=8)],
                         ids=["greedy", "sampled"])
async def test_nan_scores_for_one_row_fail_that_row_only(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]], params: GenerationParams
) -> None:
    armed = threading.Event()

    def corrupt(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if armed.is_set() and output.shape[0] == 3:  # the second row of the running batch goes bad
            armed.clear()
            output = output.clone()
            output[1] = float("nan")
            return output
        return None

    with scheduler(local_model, max_batch=8, seed=0) as s, hooked(local_model.model.lm_head, corrupt):
        first = s.submit(prompts[0], GREEDY)
        assert isinstance(await asyncio.wait_for(first.__anext__(), WAIT_S), str)
        rest = [s.submit(prompts[1], params), s.submit(prompts[2], GREEDY)]
        await all_active(s, 3)  # until both joined the batch
        armed.set()
        bad, good = await asyncio.gather(outcome(rest[0]), outcome(rest[1]))
        head_done = await outcome(first)
        assert isinstance(bad, ModelError) and "NaN" in str(bad)
        assert isinstance(good, Finished) and good.token_ids == alone[2]
        assert isinstance(head_done, Finished) and head_done.token_ids == alone[0]
        await served_next(s, prompts, alone)


async def test_a_nan_soft_prompt_fails_at_admission_and_spares_the_batch(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]]
) -> None:
    hidden = local_model.model.config.hidden_size
    broken = SoftPrompt("broken", torch.full((2, hidden), float("nan")))
    with scheduler(local_model, max_batch=8) as s:
        results = await asyncio.gather(outcome(s.submit(prompts[0], GREEDY)),
                                       outcome(s.submit(prompts[1], GREEDY, soft_prompt=broken)),
                                       outcome(s.submit(prompts[2], GREEDY)))
    assert isinstance(results[1], ModelError) and "NaN" in str(results[1])
    assert [r.token_ids for r in (results[0], results[2]) if isinstance(r, Finished)] == [alone[0], alone[2]]


def kill(thread: threading.Thread | None) -> None:
    """Deliver SystemExit inside the worker thread, as an unexpected BaseException would arrive."""
    assert thread is not None and thread.ident is not None
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    assert hit == 1


async def test_a_killed_worker_loop_is_restarted_by_its_supervisor(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]]
) -> None:
    with scheduler(local_model, max_batch=8) as s:
        streams = [s.submit(ids, LONG) for ids in prompts]
        await all_active(s, 3)
        kill(s._health.thread)
        results = await asyncio.gather(*(outcome(stream) for stream in streams))
        assert any(isinstance(r, ModelError) for r in results)  # the rows it held end with an error...
        assert s.stats.crashes == 1 and s.broken is None
        await served_next(s, prompts, alone)  # ...and the restarted loop serves the next request


async def test_a_worker_that_cannot_be_restarted_fails_pending_and_future_requests(
    local_model: LoadedModel, prompts: list[list[int]]
) -> None:
    with scheduler(local_model, max_batch=1, max_restarts=0) as s:
        running, queued = s.submit(prompts[0], LONG), s.submit(prompts[1], LONG)
        assert isinstance(await asyncio.wait_for(running.__anext__(), WAIT_S), str)
        kill(s._health.thread)
        results = await asyncio.gather(outcome(running), outcome(queued))
        assert all(isinstance(r, ModelError) for r in results)
        assert s.broken is not None and "restart the bot" in s.broken
        with pytest.raises(ModelError, match="crashed"):
            s.submit(prompts[2], GREEDY)


async def test_consumers_notice_a_worker_thread_that_died_without_cleaning_up(
    local_model: LoadedModel, prompts: list[list[int]]
) -> None:
    s = BatchScheduler(local_model.model, local_model.tokenizer, liveness_poll_s=0.05)
    s._supervise = lambda: None  # type: ignore[method-assign]  # the thread ends at once, holding the queue
    stream = s.submit(prompts[0], GREEDY)
    with pytest.raises(ModelError, match="stopped unexpectedly"):
        await collect(stream)
    with pytest.raises(ModelError, match="stopped unexpectedly"):
        s.submit(prompts[1], GREEDY)
    s.close()


async def test_a_step_that_hangs_ends_waiting_replies_and_the_worker_recovers(
    local_model: LoadedModel, prompts: list[list[int]], alone: list[tuple[int, ...]]
) -> None:
    release, entered = threading.Event(), threading.Event()

    def hang(module: Any, args: tuple[Any, ...]) -> None:
        if not release.is_set():
            entered.set()
            release.wait(WAIT_S)

    with scheduler(local_model, max_batch=8, stall_timeout_s=1.0, liveness_poll_s=0.05) as s:
        with hooked(embeddings(local_model), hang, pre=True):
            stream = s.submit(prompts[0], GREEDY)
            with pytest.raises(ModelError, match="stuck"):
                await collect(stream)
            assert entered.is_set()
            s._health.stall_timeout_s = WAIT_S  # healthy steps on a busy 2-core machine can take seconds
            release.set()
        await served_next(s, prompts, alone)
