"""The embedded default backend: rooms in this process's memory."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import CapacityExceeded, RoomExists, RoomNotFound, Unauthorized
from ..protocol import is_server_peer
from ..rooms import Room, RoomSnapshot
from ._base import Backend, DeliveryReport, DeliverySink, Envelope, JoinOutcome, LeaveOutcome, UndeliveredNotice

__all__ = ["MemoryBackend"]

log = logging.getLogger(__name__)


class _Outbox:
    """One peer's queued messages and their size in bytes."""

    __slots__ = ("items", "size")

    def __init__(self) -> None:
        self.items: deque[Envelope] = deque()
        self.size = 0


class MemoryBackend(Backend):
    """Rooms, tokens and outboxes in dicts. Single process; every operation is atomic because
    none of them awaits between reading and writing state."""

    name = "memory"
    immediate = True

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self._tokens: dict[str, tuple[str, str]] = {}
        self._outboxes: dict[tuple[str, str], _Outbox] = {}
        self._queued_bytes = 0
        self._full = False  # the total byte limit was hit (logged once until it frees up)
        self._peer_count = 0
        self._sink: DeliverySink | None = None

    async def start(self, sink: DeliverySink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._outboxes.clear()
        self._queued_bytes = 0

    def _drop_outbox(self, key: tuple[str, str]) -> list[Envelope]:
        box = self._outboxes.pop(key, None)
        if box is None:
            return []
        self._queued_bytes -= box.size
        self._check_freed()
        return list(box.items)

    def _check_freed(self) -> None:
        if self._full and self._queued_bytes < self.outbox_limits.total_max_bytes // 2:
            self._full = False
            log.info("outboxes are below half their byte limit again (%d bytes)", self._queued_bytes)

    def _room(self, room_id: str) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomNotFound(f"Room {room_id!r} does not exist.")
        return room

    async def create_room(
        self, room_id: str, max_peers: int, metadata: dict[str, Any], now: int, *, max_rooms: int
    ) -> RoomSnapshot:
        if room_id in self._rooms:
            raise RoomExists(f"Room {room_id!r} already exists.")
        if len(self._rooms) >= max_rooms:
            raise CapacityExceeded(f"The server holds its maximum of {max_rooms} rooms.")
        room = self._rooms[room_id] = Room(room_id, max_peers, metadata, now)
        return room.snapshot()

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
        room = self._rooms.get(room_id)
        created = room is None
        if room is None:
            if not may_create:
                raise RoomNotFound(f"Room {room_id!r} does not exist.")
            if len(self._rooms) >= max_rooms:
                raise CapacityExceeded(f"The server holds its maximum of {max_rooms} rooms.")
            room = Room(room_id, default_max_peers, {}, now)
        elif peer_id not in room and self._peer_count >= max_peers:
            raise CapacityExceeded(f"The server holds its maximum of {max_peers} peers.")
        if created and self._peer_count >= max_peers:
            raise CapacityExceeded(f"The server holds its maximum of {max_peers} peers.")
        result = room.join(peer_id, metadata, now, token=token, proof=proof, trusted=trusted)
        if created:
            self._rooms[room_id] = room
        if result.replaced_token is None:
            self._peer_count += 1
        elif result.replaced_token != result.token:
            self._tokens.pop(result.replaced_token, None)
        self._tokens[result.token] = (room_id, peer_id)
        return JoinOutcome(result.peer, result.token, room.snapshot(), created, result.replaced_token is not None)

    async def leave(self, room_id: str, peer_id: str) -> LeaveOutcome | None:
        room = self._rooms.get(room_id)
        if room is None or peer_id not in room:
            return None
        token = room.token_of(peer_id)
        info = room.leave(peer_id)
        self._peer_count -= 1
        if token is not None:
            self._tokens.pop(token, None)
        self._drop_outbox((room_id, peer_id))
        closed = room.empty
        if closed:
            del self._rooms[room_id]
        return LeaveOutcome(info, room_id, tuple(room.peer_ids()), closed)

    async def touch(self, room_id: str, peer_id: str, now: int) -> int:
        return self._room(room_id).touch(peer_id, now)

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        return self._room(room_id).snapshot()

    async def resolve(self, token: str) -> tuple[str, str]:
        found = self._tokens.get(token)
        if found is None:
            raise Unauthorized("Unknown or expired token: connect again.")
        return found

    async def member_token(self, room_id: str, peer_id: str) -> str | None:
        room = self._rooms.get(room_id)
        return room.token_of(peer_id) if room is not None else None

    async def recipients(self, room_id: str, from_peer_id: str, to: str | None) -> list[str]:
        return self._room(room_id).recipients(from_peer_id, to)

    def push_now(self, room_id: str, from_peer_id: str, to: str, text: str) -> bool:
        room = self._rooms.get(room_id)
        sink = self._sink
        return (
            room is not None
            and sink is not None
            and room.has_both(from_peer_id, to)
            and sink.push_channel(room_id, to, text)
        )

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
    ) -> DeliveryReport:
        """The relay: delivery here is done when it returns, so ``then`` is never called."""
        peer_ids = self._room(room_id).recipients(from_peer_id, to)
        sink = self._sink
        # The common case, a signal to one peer with a socket here, without the general loop.
        if to is not None and sink is not None and sink.push_channel(room_id, to, envelope.text):
            return DeliveryReport([to])
        return await self.deliver(room_id, peer_ids, envelope, outbox_max=outbox_max, now=now)

    async def deliver(
        self, room_id: str, peer_ids: list[str], envelope: Envelope, *, outbox_max: int, now: int
    ) -> DeliveryReport:
        report = DeliveryReport()
        sink = self._sink
        text = envelope.text
        for peer_id in peer_ids:
            if sink is not None and (
                # a live channel here; else only an ``@`` id can still be served here (no coroutine
                # per message for the others)
                sink.push_channel(room_id, peer_id, text)
                or (is_server_peer(peer_id) and await sink.push_local(room_id, peer_id, envelope))
            ):
                report.delivered.append(peer_id)
                continue
            room = self._rooms.get(room_id)
            if room is None or peer_id not in room:
                continue  # left while we were delivering
            if self._queue(room_id, peer_id, envelope, outbox_max):
                report.queued.append(peer_id)
            else:
                report.dropped.append(peer_id)
        return report

    def _queue(self, room_id: str, peer_id: str, envelope: Envelope, outbox_max: int) -> bool:
        key = (room_id, peer_id)
        box = self._outboxes.get(key)
        size = envelope.size
        limits = self.outbox_limits
        if box is not None and (len(box.items) >= outbox_max or box.size + size > limits.max_bytes):
            return False
        if self._queued_bytes + size > limits.total_max_bytes:
            if not self._full:
                self._full = True
                log.warning(
                    "outboxes hold %d bytes, their limit: messages to offline peers are dropped until some are taken",
                    self._queued_bytes,
                )
            return False
        if size > limits.max_bytes:
            return False
        if box is None:
            box = self._outboxes[key] = _Outbox()
        box.items.append(envelope)
        box.size += size
        self._queued_bytes += size
        return True

    async def take_outbox(self, room_id: str, peer_id: str) -> list[Envelope]:
        return self._drop_outbox((room_id, peer_id))

    async def expired_peers(self, now: int, timeout_ms: int) -> list[tuple[str, str]]:
        return [(rid, pid) for rid, room in self._rooms.items() for pid in room.expired(now, timeout_ms)]

    async def expire_outboxes(self, now: int, ttl_ms: int) -> list[UndeliveredNotice]:
        notices: list[UndeliveredNotice] = []
        deadline = now - ttl_ms
        for key, box in list(self._outboxes.items()):
            items = box.items
            while items and items[0].ts < deadline:
                envelope = items.popleft()
                box.size -= envelope.size
                self._queued_bytes -= envelope.size
                notices.append(UndeliveredNotice(key[0], key[1], envelope))
            if not items:
                del self._outboxes[key]
        self._check_freed()
        return notices

    async def add_server_peer(self, room_id: str, peer_id: str, now: int) -> bool:
        room = self._rooms.get(room_id)
        return room.add_server_peer(peer_id, now) if room else False

    async def remove_server_peer(self, room_id: str, peer_id: str) -> bool:
        room = self._rooms.get(room_id)
        return room.remove_server_peer(peer_id) if room else False

    async def counts(self) -> tuple[int, int]:
        return len(self._rooms), self._peer_count

    async def room_ids(self, limit: int) -> list[str]:
        return list(itertools.islice(self._rooms, limit))

    async def queued_bytes(self) -> int:
        return self._queued_bytes
