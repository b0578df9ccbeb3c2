"""The server as a WebRTC peer: echo, record, probe and play sessions, your own modes, and WHIP ingest.

This is the only package that imports aiortc and PyAV. ``fantasize_rtc.create_app`` plugs
:func:`setup_media` into the transport (unless ``media=False``), which adds the routes ``POST /rtc/offer``,
``GET /rtc/modes``, ``GET/DELETE /rtc/sessions/{id}``, ``GET /rtc/recordings``,
``GET/DELETE /rtc/recordings/{id}``, ``POST /whip`` and ``PATCH/DELETE /whip/{id}``, registers a
server peer ``@<mode>`` per registered mode (:data:`modes`: ``@echo @record @probe @play`` and
yours) on the facade, and closes every session (finalizing recordings) on app cleanup.

The public API for modes of your own: :class:`Mode`, :data:`modes` (:class:`ModeRegistry`),
:class:`MediaSession`; frame access and sending (:mod:`.frames`: :class:`VideoFrames`,
:class:`AudioFrames`, the ndarray conversions, :class:`OutputTrack`, :func:`transform_video`)
and the worker pools (:class:`Workers`, ``session.workers``); docs/modes.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..web import DRAIN_KEY, RTC_KEY
from .events import MEDIA_CLOSED, MEDIA_CONNECTED, RECORDING_SAVED, MediaClosed, MediaConnected, RecordingSaved
from .frames import (
    AudioFrames,
    OutputTrack,
    VideoFrames,
    audio_to_ndarray,
    ndarray_to_audio,
    ndarray_to_video,
    transform_video,
    video_to_ndarray,
)
from .keys import MEDIA_KEY
from .manager import MediaManager
from .modes import ModeInfo, ModeRegistry, modes
from .recordings import FORMATS, RecordingInfo, RecordingStore
from .routes import routes
from .session import MediaSession, Mode, Owner, SessionOptions
from .whep import routes as whep_routes
from .whip import routes as whip_routes
from .workers import Workers

__all__ = [
    "AudioFrames",
    "FORMATS",
    "MEDIA_CLOSED",
    "MEDIA_CONNECTED",
    "MEDIA_KEY",
    "RECORDING_SAVED",
    "MediaClosed",
    "MediaConnected",
    "MediaManager",
    "Mode",
    "ModeInfo",
    "ModeRegistry",
    "MediaSession",
    "OutputTrack",
    "Owner",
    "RecordingInfo",
    "RecordingSaved",
    "RecordingStore",
    "SessionOptions",
    "VideoFrames",
    "Workers",
    "audio_to_ndarray",
    "modes",
    "ndarray_to_audio",
    "ndarray_to_video",
    "setup_media",
    "transform_video",
    "video_to_ndarray",
]


def setup_media(app: web.Application, registry: ModeRegistry | None = None) -> MediaManager:
    """Plug the media layer into an app made by :func:`fantasize_rtc.web.create_app`, with the
    modes of ``registry`` (default: :data:`modes`)."""
    rtc = app[RTC_KEY]
    manager = MediaManager(rtc, registry)
    server_peers = tuple("@" + name for name in manager.modes)  # what a room can signal to
    app[MEDIA_KEY] = manager
    rtc.room_media = manager.forwarding.room  # the room snapshot's "media": who publishes what
    app.add_routes(routes)
    app.add_routes(whip_routes)
    app.add_routes(whep_routes)
    for peer_id in server_peers:
        rtc.register_server_peer(peer_id, manager.on_server_peer_message)
    # On SIGTERM (web._drain): bye to the owners of signaled sessions, then every session closed.
    app[DRAIN_KEY].notify.append(manager.say_bye)
    app[DRAIN_KEY].finish.append(manager.finish)

    async def media_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await manager.begin()
        yield
        # Runs before the facade closes (cleanup_ctx unwinds in reverse): sessions end and
        # recordings are finalized while rooms and channels still exist.
        for peer_id in server_peers:
            rtc.unregister_server_peer(peer_id)
        await manager.close()
        manager.end()

    app.cleanup_ctx.append(media_lifecycle)
    return manager
