"""The whole server as one aiohttp application: the transport with the media layer plugged in.

This is what ``fantasize-rtc serve`` runs and what ``from fantasize_rtc import create_app`` gives.
It sits above both layers it assembles (docs/architecture.md): neither imports the other's way up.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from aiohttp import web

from .config import RtcConfig
from .server import RtcServer
from .web import Plugin
from .web import create_app as create_transport_app

if TYPE_CHECKING:
    from .media import ModeRegistry

__all__ = ["create_app"]


def create_app(
    rtc: RtcServer | None = None,
    config: RtcConfig | None = None,
    *,
    media: bool = True,
    metrics: bool = True,
    static: bool = True,
    modes: ModeRegistry | None = None,
) -> web.Application:
    """Signaling routes, WebSocket, long-poll, health, the demo page (``static``), with ``media``
    the server's own WebRTC peers (``/rtc/offer``, ``/whip``, recordings, ``@echo`` ...) and with
    ``metrics`` Prometheus ``/metrics`` (admin key; ``metrics.start_metrics_server`` for a port of
    its own).

    ``modes``: the media modes offered (default ``fantasize_rtc.media.modes``: the built-in ones
    and those registered there; docs/modes.md). ``media=False`` never imports aiortc (as
    :func:`fantasize_rtc.web.create_app` alone)."""
    plugins: list[Plugin] = []
    if media:
        from .media import setup_media

        plugins.append(functools.partial(setup_media, registry=modes))
    if metrics:
        from .metrics import setup_metrics

        plugins.append(setup_metrics)  # after media: it reads the media manager when there is one
    return create_transport_app(rtc, config, plugins=plugins, static=static)
