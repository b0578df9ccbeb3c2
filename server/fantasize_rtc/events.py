"""Event names and payloads emitted by :class:`~fantasize_rtc.RtcServer`.

The names are the seed library's; payloads are frozen dataclasses with snake_case fields and a
``to_dict()`` giving the camelCase form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .protocol import Signal
    from .rooms import PeerInfo, RoomSnapshot

__all__ = [
    "PEER_CONNECTED",
    "PEER_DISCONNECTED",
    "PEER_HEARTBEAT",
    "ROOM_CLOSED",
    "ROOM_CREATED",
    "SIGNAL",
    "PeerConnected",
    "PeerDisconnected",
    "PeerHeartbeat",
    "RoomClosed",
    "RoomCreated",
    "SignalRelayed",
]

ROOM_CREATED: Final = "room:created"
ROOM_CLOSED: Final = "room:closed"
PEER_CONNECTED: Final = "peer:connected"
PEER_DISCONNECTED: Final = "peer:disconnected"
PEER_HEARTBEAT: Final = "peer:heartbeat"
SIGNAL: Final = "signal"


@dataclass(frozen=True, slots=True)
class RoomCreated:
    room: RoomSnapshot

    @property
    def room_id(self) -> str:
        return self.room.room_id

    def to_dict(self) -> dict[str, Any]:
        return {"roomId": self.room.room_id, "room": self.room.to_wire()}


@dataclass(frozen=True, slots=True)
class RoomClosed:
    room_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"roomId": self.room_id}


@dataclass(frozen=True, slots=True)
class PeerConnected:
    room_id: str
    peer: PeerInfo

    def to_dict(self) -> dict[str, Any]:
        return {"roomId": self.room_id, "peer": self.peer.to_wire()}


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    room_id: str
    peer_id: str
    #: One of :class:`fantasize_rtc.protocol.LeaveReason`: ``left``, ``timeout``, ``replaced``.
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"roomId": self.room_id, "peerId": self.peer_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PeerHeartbeat:
    room_id: str
    peer_id: str
    last_seen: int

    def to_dict(self) -> dict[str, Any]:
        return {"roomId": self.room_id, "peerId": self.peer_id, "lastSeen": self.last_seen}


@dataclass(frozen=True, slots=True)
class SignalRelayed:
    room_id: str
    from_peer_id: str
    signal: Signal
    ts: int
    delivered: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "roomId": self.room_id,
            "fromPeerId": self.from_peer_id,
            "signal": self.signal.to_wire(),
            "ts": self.ts,
            "delivered": list(self.delivered),
            "queued": list(self.queued),
        }
