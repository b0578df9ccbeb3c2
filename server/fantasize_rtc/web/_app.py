"""``create_app``: the aiohttp application of the transport, with plugins (the media layer is one)."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web

from .._resources import static_dir
from ..config import RtcConfig
from ..counters import TransportCounters
from ..protocol import CloseCode
from ..server import RtcServer, create_rtc_server
from . import _routes, _socket
from ._channel import SOCKETS_KEY, WRITE_BATCH_KEY, WebSocketChannel, WriteBatch
from ._drain import DRAIN_KEY, Drain
from ._lean import LEAN_KEY, LeanUpgrades
from ._middleware import cors_middleware, error_middleware
from ._proxy import proxy_middleware
from ._requests import ADMIN_KEY, COUNTERS_KEY, RTC_KEY, STARTED_KEY

__all__ = ["Plugin", "create_app"]

#: Adds routes, server peers or cleanup to an app :func:`create_app` made (before it starts):
#: ``fantasize_rtc.media.setup_media`` is one. Its return value is ignored.
Plugin = Callable[[web.Application], Any]


def create_app(
    rtc: RtcServer | None = None,
    config: RtcConfig | None = None,
    *,
    plugins: Iterable[Plugin] = (),
    static: bool = True,
) -> web.Application:
    """The aiohttp application: signaling routes, WebSocket, long-poll, health and (``static``)
    the demo page; then each of ``plugins`` adds its part.

    This is the transport alone: it never imports the media layer (aiortc). The whole server, the
    server's own WebRTC peers included, is :func:`fantasize_rtc.create_app`, which passes
    ``plugins=[fantasize_rtc.media.setup_media]``.

    Pass ``rtc`` to share one facade with your own code; otherwise one is made from ``config``.
    The app starts the facade on startup and, when it made it, closes it on cleanup.
    """
    owns_rtc = rtc is None
    if rtc is None:
        rtc = create_rtc_server(config)
    config = rtc.config
    # Outermost first. The proxy middleware (only with --trusted-proxy) comes before everything:
    # CORS, the error middleware, the routes and any middleware a plugin appends all get its clone
    # of the request, with the client's address and scheme. It raises nothing, so it needs no error
    # middleware around it, and it runs before anything reads the body (a clone cannot be made
    # after). CORS is next, outside the error middleware, so error answers carry its headers too.
    # The error middleware also counts the requests in progress for the drain (web._drain).
    drain = Drain(rtc)
    middlewares: list[Any] = [error_middleware(drain)]
    if config.cors_origins:
        middlewares.insert(0, cors_middleware(config.cors_origins))
    if config.trusted_proxies:
        middlewares.insert(0, proxy_middleware(config.trusted_proxies))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[RTC_KEY] = rtc
    sockets: weakref.WeakSet[WebSocketChannel] = weakref.WeakSet()
    app[SOCKETS_KEY] = sockets
    app[COUNTERS_KEY] = counters = TransportCounters()
    app[WRITE_BATCH_KEY] = WriteBatch(counters)
    app[STARTED_KEY] = time.monotonic()
    app[DRAIN_KEY] = drain  # plugins add their steps
    # WebSocket upgrades and keep-alive JSON POSTs without aiohttp's request machinery, under
    # `serve` (web._lean, web._lean_http)
    app[LEAN_KEY] = lean = LeanUpgrades(app)
    lean.expect_middlewares(middlewares)
    if config.admin_key:
        app[ADMIN_KEY] = config.admin_key
    app.add_routes(_routes.routes)
    app.add_routes(_socket.routes)

    async def rtc_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await rtc.start()
        yield
        if owns_rtc:
            await rtc.close()

    async def close_sockets(app: web.Application) -> None:
        app[LEAN_KEY].shut()
        channels = app[SOCKETS_KEY]
        for channel in list(channels):
            channel.flush()
            await channel.ws.close(code=CloseCode.GOING_AWAY, message=b"server shutting down")

    app.cleanup_ctx.append(rtc_lifecycle)
    app.on_shutdown.append(close_sockets)
    for plugin in plugins:
        plugin(app)
    if static:
        app.router.add_get("/", _routes.index)
        app.router.add_static("/static/", static_dir(), append_version=False)
    return app
