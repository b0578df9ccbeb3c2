"""Room and peer rules: join, leave, touch, expire, recipients.

Pure and synchronous: no I/O, time comes in as ``now`` (ms), so the rules are tested with a fake
clock. Backends keep :class:`Room` objects (or their serialized form) and apply these rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import PeerIdTaken, PeerNotFound, RoomFull
from .protocol import is_server_peer

__all__ = ["JoinResult", "PeerInfo", "Room", "RoomSnapshot"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: str
    metadata: dict[str, Any]
    connected_at: int
    last_seen: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "peerId": self.peer_id,
            "metadata": self.metadata,
            "connectedAt": self.connected_at,
            "lastSeen": self.last_seen,
        }


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    room_id: str
    max_peers: int
    metadata: dict[str, Any]
    created_at: int
    peers: tuple[PeerInfo, ...]
    #: The room's group call through the server (``publishers``: who sends what), when it has one.
    media: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        out = {
            "roomId": self.room_id,
            "maxPeers": self.max_peers,
            "metadata": self.metadata,
            "createdAt": self.created_at,
            "peers": [p.to_wire() for p in self.peers],
        }
        if self.media is not None:
            out["media"] = self.media
        return out

    def summary(self) -> dict[str, Any]:
        """The ``room`` object of a ``Connect`` answer."""
        return {"roomId": self.room_id, "maxPeers": self.max_peers, "metadata": self.metadata}

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(p.peer_id for p in self.peers)


class _Peer:
    __slots__ = ("connected_at", "last_seen", "metadata", "peer_id", "token")

    def __init__(self, peer_id: str, token: str, metadata: dict[str, Any], now: int) -> None:
        self.peer_id = peer_id
        self.token = token
        self.metadata = metadata
        self.connected_at = now
        self.last_seen = now

    def info(self) -> PeerInfo:
        return PeerInfo(self.peer_id, self.metadata, self.connected_at, self.last_seen)


@dataclass(frozen=True, slots=True)
class JoinResult:
    peer: PeerInfo
    token: str
    #: The token of the peer this join replaced (same id, proven by its token), if any.
    replaced_token: str | None


class Room:
    """One room's members. Server peers (``@echo`` ...) are listed but never counted or reaped."""

    __slots__ = ("_peers", "_server_peers", "created_at", "max_peers", "metadata", "room_id")

    def __init__(self, room_id: str, max_peers: int, metadata: dict[str, Any], now: int) -> None:
        self.room_id = room_id
        self.max_peers = max_peers
        self.metadata = metadata
        self.created_at = now
        self._peers: dict[str, _Peer] = {}
        self._server_peers: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def has_both(self, first: str, second: str) -> bool:
        """Whether both peers are members (one call on the relay's hot path instead of two)."""
        peers = self._peers
        return first in peers and second in peers

    @property
    def empty(self) -> bool:
        return not self._peers

    def peer_ids(self) -> list[str]:
        return list(self._peers)

    def token_of(self, peer_id: str) -> str | None:
        peer = self._peers.get(peer_id)
        return peer.token if peer else None

    def join(
        self,
        peer_id: str,
        metadata: dict[str, Any],
        now: int,
        *,
        token: str,
        proof: str | None = None,
        trusted: bool = False,
    ) -> JoinResult:
        """Add a peer. A taken id may be replaced only with that peer's token (``proof``) or
        when the caller vouches for the identity (``trusted``, e.g. a verified JWT ``sub``)."""
        existing = self._peers.get(peer_id)
        replaced: str | None = None
        if existing is not None:
            if not trusted and proof != existing.token:
                raise PeerIdTaken(f"Peer id {peer_id!r} is already connected in room {self.room_id!r}.")
            replaced = existing.token
            token = existing.token if proof == existing.token else token
        elif len(self._peers) >= self.max_peers:
            raise RoomFull(f"Room {self.room_id!r} is full ({self.max_peers} peers).")
        peer = _Peer(peer_id, token, metadata, now)
        self._peers[peer_id] = peer
        return JoinResult(peer.info(), token, replaced)

    def leave(self, peer_id: str) -> PeerInfo:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            raise PeerNotFound(f"Peer {peer_id!r} is not in room {self.room_id!r}.")
        return peer.info()

    def touch(self, peer_id: str, now: int) -> int:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise PeerNotFound(f"Peer {peer_id!r} is not in room {self.room_id!r}.")
        peer.last_seen = max(peer.last_seen, now)
        return peer.last_seen

    def expired(self, now: int, timeout_ms: int) -> list[str]:
        """Peers silent for longer than ``timeout_ms`` (the caller removes them)."""
        deadline = now - timeout_ms
        return [p.peer_id for p in self._peers.values() if p.last_seen < deadline]

    def recipients(self, from_peer_id: str, to: str | None) -> list[str]:
        """Who gets a signal from ``from_peer_id``: ``to`` alone, or every other member."""
        if from_peer_id not in self._peers:
            raise PeerNotFound(f"Peer {from_peer_id!r} is not in room {self.room_id!r}.")
        if to is None:
            return [pid for pid in self._peers if pid != from_peer_id]
        if to not in self._peers:
            raise PeerNotFound(f"Peer {to!r} is not in room {self.room_id!r}.")
        return [to]

    def add_server_peer(self, peer_id: str, now: int) -> bool:
        assert is_server_peer(peer_id)
        if peer_id in self._server_peers:
            return False
        self._server_peers[peer_id] = now
        return True

    def remove_server_peer(self, peer_id: str) -> bool:
        return self._server_peers.pop(peer_id, None) is not None

    def snapshot(self) -> RoomSnapshot:
        peers = [p.info() for p in self._peers.values()]
        peers.extend(PeerInfo(pid, {"server": True}, at, at) for pid, at in self._server_peers.items())
        return RoomSnapshot(self.room_id, self.max_peers, self.metadata, self.created_at, tuple(peers))
