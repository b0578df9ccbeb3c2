"""fantasize-rtc-server: WebRTC signaling rooms and a real WebRTC peer, on aiohttp + aiortc.

The core (``protocol``, ``rooms``, ``errors``, ``config``, ``events``) and the facade import
no web framework; :func:`create_app` (aiohttp, and the media layer) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import IceServer, RtcConfig
from .errors import RtcError
from .protocol import Signal
from .rooms import PeerInfo, RoomSnapshot
from .server import Connect, RelayResult, RtcServer, create_rtc_server

if TYPE_CHECKING:
    from .app import create_app


__all__ = [
    "Connect",
    "IceServer",
    "PeerInfo",
    "RelayResult",
    "RoomSnapshot",
    "RtcConfig",
    "RtcError",
    "RtcServer",
    "Signal",
    "__version__",
    "create_app",
    "create_rtc_server",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
