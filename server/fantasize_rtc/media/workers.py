"""Where modes run CPU-heavy work: a bounded thread pool and a bounded process pool, off the event loop.

The event loop carries every session's RTP, DTLS and ICE, and the signaling. A mode that decodes,
runs numpy or a model on it stalls all of them, so such work goes here::

    result = await session.workers.run_in_thread(func, frame)      # numpy, PyAV: release the GIL
    result = await session.workers.run_in_process(func, array)     # pure-Python work that holds it

One :class:`Workers` belongs to the :class:`~.manager.MediaManager` (``session.workers``), shared
by every session of the process; its pools start on first use and :meth:`Workers.close` (at the
app's cleanup) shuts them down. Both are bounded twice: a few workers, and a few calls in flight
per worker; a caller beyond that waits its turn (so a mode slower than real time waits, and the
frame iterators of :mod:`.frames` drop the frames it had no time for, instead of queueing them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Workers"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Calls allowed in flight (running or queued) per worker before callers wait for a turn.
CALLS_PER_WORKER = 2


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(8, cores))


class Workers:
    """A bounded thread pool and a bounded process pool for modes (see the module's doc).

    Threading rules: call :meth:`run_in_thread` / :meth:`run_in_process` from the event loop
    (they are coroutines); the function runs in a worker and must not touch asyncio objects, the
    session or the peer connection (hand results back by returning them). PyAV frames may go to
    a thread (PyAV and numpy release the GIL while they convert and compute), not to a process:
    send ndarrays there, and a function defined at a module's top level (it is pickled)."""

    def __init__(self, threads: int | None = None, processes: int | None = None) -> None:
        self.threads = threads or _default_workers()
        self.processes = processes or _default_workers()
        self._thread_pool: ThreadPoolExecutor | None = None
        self._process_pool: ProcessPoolExecutor | None = None
        self._thread_turns: asyncio.Semaphore | None = None
        self._process_turns: asyncio.Semaphore | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether a pool runs (they start on first use)."""
        return self._thread_pool is not None or self._process_pool is not None

    async def run_in_thread(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``func(*args, **kwargs)`` in a worker thread; its result (or exception) here."""
        if self._thread_pool is None:
            self._check_open()
            self._thread_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fantasize-mode")
            self._thread_turns = asyncio.Semaphore(self.threads * CALLS_PER_WORKER)
        assert self._thread_turns is not None
        return await self._run(self._thread_pool, self._thread_turns, func, args, kwargs)

    async def run_in_process(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``func(*args, **kwargs)`` in a worker process (``spawn``: a fresh interpreter, never a
        fork of this threaded one); arguments and result are pickled. The first call starts the
        pool (about a second); later ones cost the pickling only."""
        if self._process_pool is None:
            self._check_open()
            context = multiprocessing.get_context("spawn")
            self._process_pool = ProcessPoolExecutor(self.processes, mp_context=context)
            self._process_turns = asyncio.Semaphore(self.processes * CALLS_PER_WORKER)
        assert self._process_turns is not None
        return await self._run(self._process_pool, self._process_turns, func, args, kwargs)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the media workers are shut down (the app is stopping)")

    async def _run(
        self,
        pool: Executor,
        turns: asyncio.Semaphore,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        async with turns:
            self._check_open()
            call = functools.partial(func, *args, **kwargs) if kwargs else functools.partial(func, *args)
            # A cancelled caller (its session closed) leaves a running call to finish on its own
            # (a thread cannot be interrupted) and gives its turn back at once: after a burst of
            # cancellations more calls than the bound may run for a while, never more queued.
            return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def close(self) -> None:
        """Shut both pools down: queued calls are cancelled, running ones finish (waited for in
        a thread, so the loop stays free). Safe to call twice; later calls raise RuntimeError."""
        self._closed = True
        pools: list[Executor] = [p for p in (self._thread_pool, self._process_pool) if p is not None]
        self._thread_pool = self._process_pool = None
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True)
        if pools:
            log.debug("media workers shut down")
