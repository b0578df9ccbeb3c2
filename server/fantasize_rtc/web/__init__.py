"""aiohttp transport: the routes of docs/protocol.md over the facade.

``create_app(rtc=None, config=None, plugins=())`` returns an :class:`aiohttp.web.Application`;
mount it as a sub-app or serve it (:mod:`fantasize_rtc.serving`). Errors become
``{"error": {code, message}}``. One module per idea:

- ``_requests``: app keys, the JSON answer and error shape, bodies, tokens, the admin key (what
  the media layer's routes use too);
- ``_middleware``: errors to JSON, unread bodies, CORS;
- ``_routes``: the HTTP routes; ``_socket``: ``GET /rtc/ws`` and its frames; ``_lean``: the
  same socket without aiohttp's request machinery, which ``serve`` uses;
- ``_channel``: a WebSocket as a hub channel (batched writes);
- ``_app``: ``create_app`` and its plugins;
- ``_drain``: what the app does between SIGTERM and its exit (``drain(app, seconds)``).

This package never imports the media layer; :func:`fantasize_rtc.create_app` plugs it in.
"""

from __future__ import annotations

from ._app import Plugin, create_app
from ._channel import WebSocketChannel
from ._drain import DRAIN_KEY, Drain, DrainReport, DrainStep, drain
from ._lean import LEAN_KEY
from ._requests import (
    ADMIN_KEY,
    COUNTERS_KEY,
    RTC_KEY,
    STARTED_KEY,
    is_admin,
    json_response,
    read_body,
    read_json,
    refuse_admin_key_in_url,
    require_admin_or_token,
    token_from_request,
)

__all__ = [
    "ADMIN_KEY",
    "COUNTERS_KEY",
    "DRAIN_KEY",
    "LEAN_KEY",
    "RTC_KEY",
    "STARTED_KEY",
    "Drain",
    "DrainReport",
    "DrainStep",
    "Plugin",
    "WebSocketChannel",
    "create_app",
    "drain",
    "is_admin",
    "json_response",
    "read_body",
    "read_json",
    "refuse_admin_key_in_url",
    "require_admin_or_token",
    "token_from_request",
]
