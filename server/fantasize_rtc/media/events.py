"""Events the media layer emits on the facade (``rtc.on("media:connected", fn)`` ...).

Payloads are frozen dataclasses with snake_case fields and a ``to_dict()`` giving the camelCase
wire form, like the signaling events in :mod:`fantasize_rtc.events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MEDIA_CLOSED",
    "MEDIA_CONNECTED",
    "MEDIA_PUBLISHED",
    "MEDIA_UNPUBLISHED",
    "RECORDING_SAVED",
    "MediaClosed",
    "MediaConnected",
    "MediaPublished",
    "RecordingSaved",
]

MEDIA_CONNECTED: Final = "media:connected"
MEDIA_CLOSED: Final = "media:closed"
RECORDING_SAVED: Final = "recording:saved"
MEDIA_PUBLISHED: Final = "media:published"
MEDIA_UNPUBLISHED: Final = "media:unpublished"


@dataclass(frozen=True, slots=True)
class MediaConnected:
    """A server-side media session finished ICE + DTLS and media can flow."""

    session_id: str
    mode: str
    room_id: str | None
    peer_id: str | None
    connect_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "mode": self.mode,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "connectMs": self.connect_ms,
        }


@dataclass(frozen=True, slots=True)
class MediaClosed:
    """A session ended; ``reason`` says why (see docs/media.md, "Endings")."""

    session_id: str
    mode: str
    room_id: str | None
    peer_id: str | None
    reason: str
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "mode": self.mode,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "reason": self.reason,
            "durationMs": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class RecordingSaved:
    """A recording was finalized and is playable; ``recording`` is its listing entry."""

    recording_id: str
    session_id: str
    room_id: str | None
    peer_id: str | None
    size: int
    duration: float  # seconds
    codecs: tuple[str, ...]
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "recordingId": self.recording_id,
            "sessionId": self.session_id,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "size": self.size,
            "duration": self.duration,
            "codecs": list(self.codecs),
        }


@dataclass(frozen=True, slots=True)
class MediaPublished:
    """A track began (``media:published``) or stopped (``media:unpublished``) being forwarded:
    in a room's group call (``room_id``), or from a WHIP session to its WHEP viewers."""

    session_id: str
    room_id: str | None
    peer_id: str
    publication_id: str
    kind: str
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "publicationId": self.publication_id,
            "kind": self.kind,
            "codec": self.codec,
        }
