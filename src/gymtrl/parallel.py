"""Ordered, bounded parallel map over batches of lines, for the data stages.

Parsing and converting rollouts is CPU-bound Python, so the stages spread batches of lines over worker
processes. Results come back in input order (outputs stay byte-identical whatever the worker count),
and at most `2 * workers` batches are in flight, so memory does not grow with the input.
`workers=1` runs everything in this process: no pool, the same code path as the tests' reference.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

B = TypeVar("B")
R = TypeVar("R")

# Below this much input a pool costs more (fork + warm-up) than it saves.
SMALL_INPUT_BYTES = 8_000_000
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except AttributeError:
        return os.cpu_count() or 1


def resolve_workers(setting: int | str, input_bytes: int) -> int:
    """`data.workers`: a number, or "auto" = one per CPU (at most 8), 1 for small inputs."""
    if setting != "auto":
        return max(1, int(setting))
    if input_bytes < SMALL_INPUT_BYTES:
        return 1
    return max(1, min(available_cpus(), MAX_AUTO_WORKERS))


# The worker's (function, context) pair. Set once per worker process by the pool initializer, so that a
# large context (a tokenizer) is handed over once at fork time instead of pickled with every batch.
_worker_job: tuple[Callable, Any] | None = None


def _init_worker(fn: Callable, context: Any, stage_pid: int) -> None:
    global _worker_job
    _worker_job = (fn, context)
    if sys.platform == "linux":
        # Die with the stage: a `kill -9` of the stage must not leave workers behind.
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != stage_pid:  # the stage died before prctl took effect
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _run_batch(batch: Any) -> Any:
    fn, context = _worker_job
    # A job allocates many short-lived, acyclic objects (parsed JSON, messages), which trigger cyclic
    # GC passes that find nothing: switched off during the job (convert 8% faster, measured), and the
    # few cycles it made (exception tracebacks) are collected right after.
    gc.disable()
    try:
        return fn(context, batch)
    finally:
        gc.enable()
        gc.collect(0)


def _pool_context():
    # fork hands the context over without pickling it; elsewhere (macOS, Windows) spawn pickles it.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if sys.platform == "linux" and "fork" in methods else None)


def ordered_map(fn: Callable[[Any, B], R], context: Any, batches: Iterable[B],
                workers: int) -> Iterator[tuple[B, R]]:
    """Yields (batch, fn(context, batch)) for each batch, in input order.

    `fn` must be a module-level function (workers look it up by name).
    """
    if workers <= 1:
        for batch in batches:
            yield batch, fn(context, batch)
        return
    window: deque[tuple[B, Future]] = deque()
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                             initargs=(fn, context, os.getpid())) as pool:
        try:
            for batch in batches:
                window.append((batch, pool.submit(_run_batch, batch)))
                if len(window) >= 2 * workers:
                    batch, future = window.popleft()
                    yield batch, future.result()
            while window:
                batch, future = window.popleft()
                yield batch, future.result()
        finally:
            for _, future in window:
                future.cancel()


def batched(items: Iterable[B], size_of: Callable[[B], int], max_bytes: int = 2_000_000,
            max_items: int = 2000) -> Iterator[list[B]]:
    """Groups items into batches of about `max_bytes` (and at most `max_items`)."""
    batch: list[B] = []
    nbytes = 0
    for item in items:
        batch.append(item)
        nbytes += size_of(item)
        if nbytes >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch
