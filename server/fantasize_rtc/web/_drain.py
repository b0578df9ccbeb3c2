"""Draining: what a process does between SIGTERM and its exit (docs/operations.md, "Drain and
restart"), so that a restart or a rolling deploy behind a load balancer hurts nobody.

:func:`drain` runs it on an app :func:`~fantasize_rtc.web.create_app` made, before
``runner.cleanup()`` (:func:`fantasize_rtc.serving.stop` does both within one budget):

1. at once (:meth:`Drain.begin`, synchronous): the facade takes no new peers, and ``/healthz``,
   WebSocket upgrades, long-polls and media offers answer ``503 draining`` with ``Retry-After``,
   so load balancers stop sending and clients go elsewhere;
2. the plugins' :attr:`Drain.notify` steps, while every socket is still open (the media layer:
   the server peers send ``bye`` to the owners of the sessions made through signaling);
3. every WebSocket is closed with 1012 (service restart: connect again with the same token;
   behind a load balancer another process takes it; a client that does not take the close within
   :data:`SOCKET_CLOSE_S` is cut off) and waiting long-polls answer at once, while the plugins'
   :attr:`Drain.finish` steps run (the media layer: sessions closed, recordings finished into
   playable files) and the HTTP requests that were in progress at the start finish (still
   listening: what arrives meanwhile gets its answer, or ``503 draining``, not a refused
   connection);
4. one log line says what it did; :func:`drain` returns it as a :class:`DrainReport`, at the
   deadline at the latest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..protocol import CloseCode
from ..server import RtcServer
from ._channel import SOCKETS_KEY

__all__ = ["DRAIN_KEY", "Drain", "DrainReport", "DrainStep", "drain"]

log = logging.getLogger("fantasize_rtc.web")

#: Seconds a WebSocket gets to take its 1012 close before the drain cuts it off.
SOCKET_CLOSE_S = 2.0

#: A plugin's part of the drain: gets the deadline (``time.monotonic()`` seconds), returns what it
#: did as ``{"what": count}`` (e.g. ``{"media sessions closed": 2}``) for the report.
DrainStep = Callable[[float], Awaitable[dict[str, int]]]


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a drain did."""

    #: Seconds from :meth:`Drain.begin` until everything was done (or the deadline).
    seconds: float
    #: WebSockets asked to reconnect (closed with 1012).
    sockets: int
    #: Waiting long-polls answered at once.
    polls: int
    #: What the plugins' steps did, by what.
    counts: dict[str, int] = field(default_factory=dict)
    #: False when the deadline came first (something was still closing).
    complete: bool = True

    def summary(self) -> str:
        """One line for the log: ``drained in 0.42 s: WebSockets asked to reconnect (1012): 12, ...``."""
        parts = {"WebSockets asked to reconnect (1012)": self.sockets, "long-polls ended": self.polls, **self.counts}
        state = "drained" if self.complete else "drain cut short by its deadline"
        return f"{state} in {self.seconds:.2f} s: " + ", ".join(f"{what}: {count}" for what, count in parts.items())


class Drain:
    """The drain of one app: its state and the plugins' steps (``app[DRAIN_KEY]``)."""

    def __init__(self, rtc: RtcServer) -> None:
        self.rtc = rtc
        #: Run first, while every socket is open: tell peers what ends.
        self.notify: list[DrainStep] = []
        #: Run while the sockets close: end what runs here.
        self.finish: list[DrainStep] = []
        #: ``time.monotonic()`` when the drain began; None while serving.
        self.started_at: float | None = None
        self.report: DrainReport | None = None
        self._serving_requests = 0  # in progress and begun before the drain (error_middleware)
        self._requests_done: asyncio.Event | None = None

    def request_started(self) -> bool:
        """A request begins (``error_middleware``); True when the drain must wait for it."""
        if self.started_at is not None:
            return False
        self._serving_requests += 1
        return True

    def request_ended(self) -> None:
        """A request :meth:`request_started` said to wait for has its answer."""
        self._serving_requests -= 1
        if self._serving_requests == 0 and self._requests_done is not None:
            self._requests_done.set()

    async def _requests_finished(self) -> None:
        if self._serving_requests > 0:
            self._requests_done = asyncio.Event()
            await self._requests_done.wait()

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        """Refuse new peers, sockets, polls and media sessions from now on (``503 draining``).
        Synchronous, so a signal handler can call it; safe to call twice."""
        if self.started_at is None:
            self.started_at = time.monotonic()
            self.rtc.begin_drain()

    async def run(self, app: web.Application, deadline: float) -> DrainReport:
        """:meth:`begin`, then the steps of the module docstring, until done or ``deadline``
        (``time.monotonic()`` seconds). A second call returns the first one's report."""
        if self.report is not None:
            return self.report
        self.begin()
        assert self.started_at is not None
        counts: dict[str, int] = {}
        await _run_steps([step(deadline) for step in self.notify], deadline, counts)
        channels = [c for c in app[SOCKETS_KEY] if c.closing is None and not c.ws.closed]
        for channel in channels:
            channel.begin_close(CloseCode.SERVICE_RESTART, "server restarting: connect again")
        closing = [c.closing for c in channels if c.closing is not None]
        polls = await self.rtc.hub.close_all(CloseCode.SERVICE_RESTART, "server restarting", kind="poll")
        waits = [
            asyncio.ensure_future(_end_within(closing, min(deadline, time.monotonic() + SOCKET_CLOSE_S))),
            asyncio.ensure_future(self._requests_finished()),
        ]
        try:
            complete = await _run_steps([step(deadline) for step in self.finish], deadline, counts, waits)
        finally:
            for wait in waits:
                wait.cancel()
        self.report = DrainReport(time.monotonic() - self.started_at, len(closing), polls, counts, complete)
        (log.info if complete else log.warning)("%s", self.report.summary())
        return self.report


async def _end_within(tasks: list[asyncio.Future[bool]], until: float) -> None:
    """Wait for the sockets' close tasks until ``until``; cancel the rest (aiohttp then drops the
    connection: a client that does not read cannot hold the drain)."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()))
    for task in late:
        task.cancel()
    if late:
        log.info("drain: %d WebSockets did not take their close in time; cut off", len(late))
        await asyncio.wait(late, timeout=0.5)


async def _run_steps(
    steps: list[Awaitable[dict[str, int]]],
    deadline: float,
    counts: dict[str, int],
    others: list[asyncio.Task[None]] | None = None,
) -> bool:
    """Run ``steps`` (and wait for ``others``) until done or ``deadline``; add up their counts.
    True when everything finished in time. A step still running at the deadline is cancelled (work
    that must go on belongs in tasks of its own, which cleanup then waits for); one that fails is
    logged and counts nothing."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    waiting: list[asyncio.Future[Any]] = [*tasks, *(others or [])]
    if not waiting:
        return True
    _, pending = await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
    late = [task for task in tasks if task in pending]
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=0.1)
    for task in tasks:
        if task in pending or task.cancelled():
            continue
        if task.exception() is not None:
            log.error("a drain step failed", exc_info=task.exception())
            continue
        for what, count in task.result().items():
            counts[what] = counts.get(what, 0) + count
    return not pending


DRAIN_KEY = web.AppKey("drain", Drain)


async def drain(app: web.Application, seconds: float) -> DrainReport:
    """Drain ``app`` (made by :func:`~fantasize_rtc.web.create_app`) within ``seconds``; then
    stop it with ``runner.cleanup()``. Embedders running their own aiohttp runner call this on
    SIGTERM; ``fantasize-rtc serve`` does (:func:`fantasize_rtc.serving.stop`)."""
    return await app[DRAIN_KEY].run(app, time.monotonic() + seconds)
