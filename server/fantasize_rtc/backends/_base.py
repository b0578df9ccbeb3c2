"""The backend interface and the value objects that cross it."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..rooms import PeerInfo, RoomSnapshot

__all__ = [
    "Backend",
    "DeliveryReport",
    "DeliverySink",
    "Envelope",
    "JoinOutcome",
    "LeaveOutcome",
    "OutboxLimits",
    "UndeliveredNotice",
]


class Envelope:
    """One message on its way to peers: its JSON text (encoded once), who sent it, and the dict.

    Sockets only need the text; the dict is for server peers (``@echo`` ...), so when only the
    text is at hand (the relay splices the client's payload in; Redis hands over text) it is
    parsed on first use instead of on every message."""

    __slots__ = ("_message", "_size", "from_peer_id", "text", "ts")

    def __init__(self, message: dict[str, Any] | None, text: str, ts: int, from_peer_id: str | None = None) -> None:
        self._message = message
        self.text = text
        self.ts = ts
        self.from_peer_id = from_peer_id
        self._size = -1

    @property
    def size(self) -> int:
        """The text's size in UTF-8 bytes (worked out when first asked: only queued messages are)."""
        if self._size < 0:
            text = self.text
            self._size = len(text) if text.isascii() else len(text.encode())
        return self._size

    @property
    def message(self) -> dict[str, Any]:
        if self._message is None:
            self._message = json.loads(self.text)
        return self._message


class LocalChannel(Protocol):
    async def close(self, code: int, reason: str) -> None: ...


class DeliverySink(Protocol):
    """This process's live channels, as a backend sees them (the facade's hub implements it)."""

    def push_channel(self, room_id: str, peer_id: str, text: str) -> bool:
        """True when the peer's live channel here took it (no waiting); False when it has none."""
        ...

    async def push_local(self, room_id: str, peer_id: str, envelope: Envelope) -> bool:
        """True when a live channel took it; False when the peer has none here."""
        ...

    def has_local(self, room_id: str, peer_id: str) -> bool: ...

    def detach(self, room_id: str, peer_id: str) -> LocalChannel | None:
        """Forget the peer's live channel here (it left or reconnected through another process)."""
        ...

    def server_peer_ids(self) -> list[str]:
        """The server peers (``@echo`` ...) of this process, told of departures elsewhere."""
        ...


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    peer: PeerInfo
    token: str
    room: RoomSnapshot
    #: Set when this join created the room.
    room_created: bool = False
    #: Set when the join replaced a live peer with the same id (it keeps its token).
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class LeaveOutcome:
    peer: PeerInfo
    room_id: str
    #: Members still in the room (to be told), not counting server peers.
    remaining: tuple[str, ...]
    room_closed: bool


class DeliveryReport:
    """Who got a message: ``delivered`` (a live channel took it), ``queued`` (outbox), ``dropped``
    (outbox full: not kept). One per relay, so a plain slotted class: a frozen dataclass with
    list factories costs more than twice as much to build on the hot path."""

    __slots__ = ("delivered", "dropped", "queued")

    def __init__(
        self, delivered: list[str] | None = None, queued: list[str] | None = None, dropped: list[str] | None = None
    ) -> None:
        self.delivered: list[str] = [] if delivered is None else delivered
        self.queued: list[str] = [] if queued is None else queued
        self.dropped: list[str] = [] if dropped is None else dropped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeliveryReport):
            return NotImplemented
        return (self.delivered, self.queued, self.dropped) == (other.delivered, other.queued, other.dropped)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"DeliveryReport(delivered={self.delivered!r}, queued={self.queued!r}, dropped={self.dropped!r})"


@dataclass(frozen=True, slots=True)
class UndeliveredNotice:
    """A queued message that expired before its recipient picked it up."""

    room_id: str
    to_peer_id: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bytes an outbox may hold: one peer's (``max_bytes``) and everyone's together
    (``total_max_bytes``: per process in memory, across processes on Redis). A message over either
    is dropped for that recipient (reported in ``dropped``), never queued past the limit. The
    count limit (``outbox_max``) comes with each delivery, as before."""

    max_bytes: int = 1024 * 1024
    total_max_bytes: int = 64 * 1024 * 1024


class Backend(abc.ABC):
    """Room state and cross-process delivery. Every method may be called concurrently.

    The rules (capacity, id taken, who receives, outbox limits, ownership of tokens) are stated
    once, in :mod:`fantasize_rtc.rooms`, and the memory backend runs that code. The Redis backend
    cannot: each rule must read and write shared state in one atomic step, so it re-states them
    in Lua (:mod:`._redis_scripts`). What keeps the two the same is ``tests/test_backend_contract.py``:
    every rule has a test there that runs against both backends (a real ``redis-server`` for the
    second), and that file, not this docstring, is the definition a new backend must pass.
    """

    name: str = "backend"
    #: Every call finishes without waiting on anything (no I/O): a transport may then run a join
    #: in a read callback, outside any task (the lean upgrade does). A backend that talks to a
    #: store (Redis: its client needs a task for its timeouts) leaves this False.
    immediate: bool = False
    #: Set by the facade from its config before :meth:`start`.
    outbox_limits: OutboxLimits = OutboxLimits()

    async def start(self, sink: DeliverySink) -> None:
        """Begin; ``sink`` delivers to live channels of this process."""

    async def close(self) -> None:
        """Stop; safe to call twice."""

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "ok": True}

    #: Calls to the shared store that failed (unreachable, or refused by it); 0 in memory.
    errors: int = 0

    async def ping(self) -> float | None:
        """Seconds one round trip to the shared store takes now; None without one (memory).
        Raises what a call raises while the store is unreachable."""
        return None

    @abc.abstractmethod
    async def create_room(
        self, room_id: str, max_peers: int, metadata: dict[str, Any], now: int, *, max_rooms: int
    ) -> RoomSnapshot: ...

    @abc.abstractmethod
    async def join(
        self,
        room_id: str,
        peer_id: str,
        metadata: dict[str, Any],
        now: int,
        *,
        token: str,
        proof: str | None,
        trusted: bool,
        default_max_peers: int,
        max_rooms: int,
        max_peers: int,
        may_create: bool = True,
    ) -> JoinOutcome:
        """Add a peer, creating the room when needed (and ``may_create``: RoomNotFound else).
        Raises RoomFull, PeerIdTaken, CapacityExceeded."""

    @abc.abstractmethod
    async def leave(self, room_id: str, peer_id: str) -> LeaveOutcome | None:
        """Remove a peer (and the room when it empties). None if it was already gone."""

    @abc.abstractmethod
    async def touch(self, room_id: str, peer_id: str, now: int) -> int: ...

    @abc.abstractmethod
    async def snapshot(self, room_id: str) -> RoomSnapshot: ...

    @abc.abstractmethod
    async def resolve(self, token: str) -> tuple[str, str]:
        """The (room_id, peer_id) a token belongs to; raises Unauthorized."""

    @abc.abstractmethod
    async def member_token(self, room_id: str, peer_id: str) -> str | None:
        """The token of a current member; None when ``peer_id`` is not one."""

    @abc.abstractmethod
    async def recipients(self, room_id: str, from_peer_id: str, to: str | None) -> list[str]: ...

    @abc.abstractmethod
    async def deliver(
        self, room_id: str, peer_ids: list[str], envelope: Envelope, *, outbox_max: int, now: int
    ) -> DeliveryReport: ...

    def push_now(self, room_id: str, from_peer_id: str, to: str, text: str) -> bool:
        """The most common relay, done now when this backend can: a member's signal to another
        member whose channel is on this process goes to that channel (True). False when nothing
        was done, for :meth:`submit` to do (and to raise what is wrong): this default, and a
        backend whose membership lives elsewhere."""
        return False

    async def submit(
        self,
        room_id: str,
        from_peer_id: str,
        to: str | None,
        envelope: Envelope,
        *,
        outbox_max: int,
        now: int,
        then: Callable[[DeliveryReport | BaseException], None],
    ) -> DeliveryReport | None:
        """Relay a message: :meth:`recipients` then :meth:`deliver` (what this default does; a
        backend may do it in one step). It may return as soon as the message is on its way, in
        order: the report when delivery is done, else None, and ``then`` gets the report (or the
        error) later, never before this returns. A socket then reads its next frame without
        waiting for a round trip to shared storage. Raises at once what fails before delivery
        (not a member, storage down)."""
        peer_ids = await self.recipients(room_id, from_peer_id, to)
        return await self.deliver(room_id, peer_ids, envelope, outbox_max=outbox_max, now=now)

    @abc.abstractmethod
    async def take_outbox(self, room_id: str, peer_id: str) -> list[Envelope]: ...

    @abc.abstractmethod
    async def expired_peers(self, now: int, timeout_ms: int) -> list[tuple[str, str]]: ...

    @abc.abstractmethod
    async def expire_outboxes(self, now: int, ttl_ms: int) -> list[UndeliveredNotice]: ...

    @abc.abstractmethod
    async def add_server_peer(self, room_id: str, peer_id: str, now: int) -> bool: ...

    @abc.abstractmethod
    async def remove_server_peer(self, room_id: str, peer_id: str) -> bool: ...

    @abc.abstractmethod
    async def counts(self) -> tuple[int, int]:
        """(rooms, peers) held."""

    async def room_ids(self, limit: int) -> list[str]:
        """Up to ``limit`` room ids (all processes' on Redis), in no particular order: for an
        operator's overview, not for the rules."""
        return []

    @abc.abstractmethod
    async def queued_bytes(self) -> int:
        """Bytes waiting in outboxes (this process's; on Redis, all processes')."""
