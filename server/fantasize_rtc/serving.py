"""Serving the app on a port, guarded against slow and greedy clients (docs/security.md).

``fantasize-rtc serve`` runs :func:`start`, and :func:`stop` on SIGTERM; an embedder running
:func:`fantasize_rtc.create_app` with its own aiohttp runner can call them too::

    runner, site, limiter = await serving.start(app, "0.0.0.0", 8080, config)
    ...
    await serving.stop(runner, config.drain_seconds)  # drain (web._drain), then runner.cleanup()

What it adds to a plain ``aiohttp.web.AppRunner`` + ``TCPSite``:

- a request's head must be complete within ``header_timeout_ms`` of the connection opening or of
  its previous response (slowloris: 1,500 sockets trickling headers used to stay open forever,
  and with the usual 1,024 file descriptors they locked everyone out); idle keep-alive
  connections close then too. Many such closes from one address are logged as a warning. Bodies
  get ``body_timeout_ms`` (the transport's ``read_body``);
- at most ``max_connections_per_address`` open connections per client address, refused and
  logged past that;
- malformed requests answered in the JSON error shape, logged as one warning line at most every
  10 s per address, never quoting the request (aiohttp's default quotes the bad header line,
  cookies and tokens included, and logs a traceback at ERROR).

:func:`raise_fd_limit` lifts the soft open-file limit to the hard one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from ._aiohttp_compat import GUARDED_SERVER, GuardedSite
from .config import RtcConfig
from .web import LEAN_KEY, DrainReport, drain

__all__ = ["ConnectionLimiter", "cleanup_reserve", "raise_fd_limit", "start", "stop"]

log = logging.getLogger(__name__)

#: Seconds between two warnings about the same client address.
LOG_EVERY_S = 10.0
#: Connections closed by the header timeout from one address before that is worth a warning.
SLOW_WARNING_AT = 10


class ConnectionLimiter:
    """Open connections per client address, and quiet logging of what it refuses."""

    def __init__(
        self,
        per_address: int,
        header_timeout_s: float = 10.0,
        clock: Any = time.monotonic,
        exempt: Iterable[str] = (),
    ) -> None:
        self.per_address = per_address
        #: Networks not limited: trusted reverse proxies, through which every client connects.
        self.exempt = tuple(ipaddress.ip_network(n, strict=False) for n in exempt)
        self.header_timeout_s = header_timeout_s
        self.refused = 0
        self.malformed_requests = 0
        #: Connections the header timeout closed before a whole request head came in.
        self.header_timeouts = 0
        self._slow: dict[str, int] = {}  # per address, since its last warning
        self._open: dict[str, int] = {}
        self._logged: dict[str, float] = {}
        self._clock = clock

    def __len__(self) -> int:
        return sum(self._open.values())

    def open_from(self, address: str) -> int:
        return self._open.get(address, 0)

    def admit(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.per_address and count >= self.per_address and not self._exempt(address):
            self.refused += 1
            if self._should_log(address):
                log.warning(
                    "refused a connection from %s: it has %d open, the limit per address (%d refused in all)",
                    address,
                    count,
                    self.refused,
                )
            return False
        self._open[address] = count + 1
        return True

    def _exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.exempt)

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def malformed(self, address: str, status: int, what: str) -> None:
        self.malformed_requests += 1
        if self._should_log(address):
            log.warning("malformed HTTP request from %s answered %d (%s)", address, status, what or "bad request")

    def no_request(self, address: str, seconds: float) -> None:
        if seconds < self.header_timeout_s * 0.9:
            return  # the client closed it: nothing to say
        self.header_timeouts += 1
        # A browser leaves a preconnected socket unused now and then; many from one address is
        # slowloris (or a broken proxy): say so, at most every LOG_EVERY_S per address.
        slow = self._slow[address] = self._slow.get(address, 0) + 1
        if slow >= SLOW_WARNING_AT and self._should_log("slow " + address):
            log.warning(
                "closed %d connections from %s that sent no complete request head within %.0f s (slow headers)",
                slow,
                address,
                self.header_timeout_s,
            )
            self._slow[address] = 0

    def _should_log(self, address: str) -> bool:
        now = self._clock()
        last = self._logged.get(address)
        if last is not None and now - last < LOG_EVERY_S:
            return False
        if len(self._logged) > 10_000:  # many addresses: forget the old ones
            self._logged = {a: t for a, t in self._logged.items() if now - t < LOG_EVERY_S}
        self._logged[address] = now
        return True


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise the soft limit on open files to the hard limit (each connection is one); returns
    (old, new) when it changed. Many systems start processes at 1,024."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return None
        return soft, target
    return None


def handler_args(config: RtcConfig) -> dict[str, Any]:
    """What every connection handler is built with: the runner's and the guarded site's."""
    # aiohttp's keep-alive timer runs from a connection's start and from each response until a
    # whole request head is in, and closes an idle connection when it fires: a header timeout.
    return {"keepalive_timeout": config.header_timeout_ms / 1000}


async def start(
    app: web.Application,
    host: str,
    port: int,
    config: RtcConfig,
    *,
    shutdown_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, web.TCPSite, ConnectionLimiter]:
    """Start ``app`` on ``host:port`` with the guards above; returns (runner, site, limiter).
    With ``ssl_context`` (:func:`fantasize_rtc.tls.context_for`) it is HTTPS and WSS on that port.
    Clean up with ``await runner.cleanup()``."""
    args = handler_args(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **args)
    await runner.setup()
    limiter = ConnectionLimiter(
        config.max_connections_per_address, config.header_timeout_ms / 1000, exempt=config.trusted_proxies
    )
    site: web.TCPSite
    if GUARDED_SERVER:
        # WebSocket upgrades and JSON POSTs without aiohttp's request machinery (web._lean)
        lean = app.get(LEAN_KEY)
        site = GuardedSite(
            runner,
            host,
            port,
            gate=limiter,
            handler_args=args,
            ssl_context=ssl_context,
            backlog=LISTEN_BACKLOG,
            takeover=lean.takeover(config.header_timeout_ms / 1000) if lean is not None else None,
        )
    else:
        log.warning(
            "this aiohttp is not one fantasize_rtc._aiohttp_compat was checked against: no connection "
            "limit per address, and malformed requests get aiohttp's own answers"
        )
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site, limiter


#: Connections the kernel may hold waiting to be accepted. aiohttp's default, 128, overflows in a
#: reconnect storm (every peer back at once after a restart or a network blip): the SYNs past it
#: are dropped and those clients wait a full second for TCP to try again. The kernel caps it at
#: ``net.core.somaxconn`` (4096 on current Linux). Node's default, for comparison, is 511.
LISTEN_BACKLOG = 4096

#: Of a stop's budget, the part kept for ``runner.cleanup()`` at most (the drain gets the rest).
CLEANUP_RESERVE_S = 2.0


def cleanup_reserve(seconds: float) -> float:
    """The part of a ``seconds`` budget :func:`stop` keeps for cleanup after the drain."""
    return min(CLEANUP_RESERVE_S, seconds / 4)


async def stop(runner: web.AppRunner, seconds: float) -> tuple[DrainReport, bool]:
    """Drain the app (:func:`fantasize_rtc.web.drain`: ``503 draining``, WebSockets asked to
    reconnect, media sessions closed and recordings finished), then ``runner.cleanup()``, all
    within ``seconds``. Returns the drain's report and whether cleanup finished in time; if it did
    not, it still runs (the caller's event loop cancels it when it ends)."""
    deadline = time.monotonic() + seconds
    app = runner.app
    assert isinstance(app, web.Application)
    report = await drain(app, seconds - cleanup_reserve(seconds))
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait([cleanup], timeout=max(0.0, deadline - time.monotonic()))
    if not done:
        log.warning("shutdown: cleanup still runs at the end of its %.1f s budget; stopping anyway", seconds)
        return report, False
    cleanup.result()  # its error, if it failed, is the caller's
    return report, True
