"""The facade: ``create_rtc_server(config) -> RtcServer``, the seed library's API in Python.

Usable with no web framework at all::

    async with create_rtc_server(max_peers_per_room=4) as rtc:
        @rtc.on("signal")
        def on_signal(event): print(event.from_peer_id, event.signal.type)

        alice = await rtc.connect_peer("demo-room", "alice")
        await rtc.connect_peer("demo-room", "bob")
        await rtc.relay("demo-room", "alice", {"type": "offer", "payload": {"sdp": "..."}})
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from . import events as ev
from .auth import (
    identity_owner_key,
    looks_like_jwt,
    mint_turn_credentials,
    new_peer_token,
    token_owner_key,
    verify_connect_jwt,
    verify_jwt_identity,
)
from .backends import Backend, DeliveryReport, Envelope, LeaveOutcome, OutboxLimits, create_backend
from .config import IceServer, RtcConfig
from .counters import RelayCounters
from .errors import (
    Draining,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    PeerNotFound,
    RateLimited,
    RoomNotFound,
    RtcError,
    Unauthorized,
)
from .hub import Channel, Hub, PollChannel, ServerPeerHandler
from .protocol import (
    CloseCode,
    LeaveReason,
    Signal,
    dumps,
    dumps_client_value,
    error_message,
    is_server_peer,
    peer_connected_message,
    peer_disconnected_message,
    signal_message,
    validate_id,
    validate_metadata,
    validate_signal,
)
from .ratelimit import TokenBucket
from .rooms import PeerInfo, RoomSnapshot

__all__ = ["Connect", "RelayResult", "RtcServer", "create_rtc_server"]

log = logging.getLogger(__name__)

Handler = Callable[[Any], Any]
H = TypeVar("H", bound=Handler)
Clock = Callable[[], int]
_RESULTS_KEPT = 4096
#: Seconds :meth:`RtcServer.close` waits for cancelled event handler tasks.
CLOSE_TASKS_S = 1.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Connect:
    """The answer to ``connect_peer``: who you are, your token, how to reach the others."""

    room_id: str
    peer_id: str
    token: str
    ice_servers: tuple[IceServer, ...]
    heartbeat_interval_ms: int
    peer_timeout_ms: int
    peers: tuple[PeerInfo, ...]
    room: RoomSnapshot
    replaced: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "roomId": self.room_id,
            "peerId": self.peer_id,
            "token": self.token,
            "iceServers": [s.to_wire() for s in self.ice_servers],
            "heartbeatIntervalMs": self.heartbeat_interval_ms,
            "peerTimeoutMs": self.peer_timeout_ms,
            "peers": [p.to_wire() for p in self.peers],
            "room": self.room.summary(),
        }


@dataclass(frozen=True, slots=True)
class RelayResult:
    delivered: tuple[str, ...]
    queued: tuple[str, ...]
    dropped: tuple[str, ...] = ()

    @property
    def listeners_notified(self) -> int:
        return len(self.delivered) + len(self.queued)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "listenersNotified": self.listeners_notified,
            "delivered": list(self.delivered),
            "queued": list(self.queued),
        }
        if self.dropped:
            out["dropped"] = list(self.dropped)
        return out


class _LaterRelay:
    """The backend's ``then`` for a relay it finishes later (Redis): the future
    :meth:`RtcServer.submit_relay` returned gets the result, or the error."""

    __slots__ = ("from_peer_id", "now", "result", "room_id", "rtc", "sig")

    def __init__(self, rtc: RtcServer, room_id: str, from_peer_id: str, sig: Signal, now: int) -> None:
        self.rtc = rtc
        self.room_id = room_id
        self.from_peer_id = from_peer_id
        self.sig = sig
        self.now = now
        self.result: asyncio.Future[RelayResult] | None = None  # made once submit returns

    def __call__(self, report: DeliveryReport | BaseException) -> None:
        result = self.result
        if result is None or result.done():
            return
        if isinstance(report, BaseException):
            result.set_exception(report)
        else:
            result.set_result(self.rtc._relayed(self.room_id, self.from_peer_id, self.sig, self.now, report))


class RtcServer:
    """Rooms, peers, relays and events. Create with :func:`create_rtc_server`.

    Start it with ``await rtc.start()`` (or ``async with``) to run the heartbeat reaper; the
    aiohttp app does that for you.
    """

    def __init__(self, config: RtcConfig, *, backend: Backend | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or wall_clock_ms
        self.backend: Backend = backend or create_backend(config.redis_url)
        self.backend.outbox_limits = OutboxLimits(config.outbox_max_bytes, config.outbox_total_max_bytes)
        #: Messages not kept for a recipient because its outbox (or all outboxes) was full.
        self.dropped_messages = 0
        #: Relays by signal type and outcome, refusals, connects and departures (``/metrics``).
        self.counters = RelayCounters()
        self.hub = Hub()
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._delivered_to: dict[str, RelayResult] = {}  # _relayed's results for one recipient
        # Rooms created per client address (max_rooms_per_address), and who created each.
        self._rooms_by_address: dict[str, set[str]] = {}
        self._room_creator: dict[str, str] = {}
        self._rooms_checked: dict[str, float] = {}
        self._started = False
        self._closed = False
        self._draining = False
        #: What a room snapshot shows of the room's group call (who publishes what): set by the
        #: media layer, which forwards the media; None without one.
        self.room_media: Callable[[str], dict[str, Any] | None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.backend.start(self.hub)
        self._reaper = asyncio.create_task(self._reap_forever(), name="fantasize-rtc-reaper")
        log.info("rtc server started (backend=%s, peer timeout %d ms)", self.backend.name, self.config.peer_timeout_ms)

    @property
    def draining(self) -> bool:
        """True once :meth:`begin_drain` was called: the process is on its way out."""
        return self._draining

    def begin_drain(self) -> None:
        """Take no new peers from now on: ``connect_peer`` raises :class:`~.errors.Draining`
        (503, ``Retry-After``), so clients go to another process. Peers already here keep working
        (relay, heartbeat, disconnect) until the process stops. Synchronous and safe to call twice."""
        if not self._draining:
            self._draining = True
            log.info("draining: new connects are refused (503 draining)")

    async def close(self) -> None:
        """Stop the reaper, close live channels, wait for handler tasks. Safe to call twice.

        Handler tasks get :data:`CLOSE_TASKS_S` to end once cancelled; one that does not is logged
        and left behind, so a handler that ignores cancellation cannot hold the shutdown."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await self.hub.close_all(CloseCode.GOING_AWAY, "server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(list(self._tasks), timeout=CLOSE_TASKS_S)
            for task in stuck:
                log.warning("event handler task %r did not end within %.0f s of cancel", task.get_name(), CLOSE_TASKS_S)
        await self.backend.close()
        log.info("rtc server closed")

    async def __aenter__(self) -> RtcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- events ---------------------------------------------------------------------------------

    @overload
    def on(self, event: str) -> Callable[[H], H]: ...
    @overload
    def on(self, event: str, handler: H) -> H: ...

    def on(self, event: str, handler: H | None = None) -> H | Callable[[H], H]:
        """Subscribe to an event; works as ``rtc.on("signal", fn)`` and as ``@rtc.on("signal")``.

        Handlers may be sync or async. Async ones run as tasks the server owns. A handler that
        raises is logged and never affects the relay or the other handlers.
        """
        if handler is None:

            def decorator(fn: H) -> H:
                self._handlers.setdefault(event, []).append(fn)
                return fn

            return decorator
        self._handlers.setdefault(event, []).append(handler)
        return handler

    def off(self, event: str, handler: Handler) -> None:
        handlers = self._handlers.get(event, [])
        if handler in handlers:
            handlers.remove(handler)

    def has_listeners(self, event: str) -> bool:
        return bool(self._handlers.get(event))

    def heard(self, event: str) -> bool:
        """Whether a handler listens for ``event`` (the busiest paths skip making an event nobody hears)."""
        return bool(self._handlers.get(event))

    def emit(self, event: str, payload: Any) -> None:
        for handler in tuple(self._handlers.get(event, ())):
            try:
                result = handler(payload)
            except Exception:
                log.exception("handler %r for %s raised", handler, event)
                continue
            if inspect.isawaitable(result):
                self.spawn(self._run_handler(event, handler, result))

    async def _run_handler(self, event: str, handler: Handler, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler %r for %s raised", handler, event)

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the server owns (cancelled and awaited by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the seed's API -------------------------------------------------------------------------

    def ice_servers_for(self, peer_id: str) -> tuple[IceServer, ...]:
        """The configured ICE servers; TURN entries without credentials get minted ones when a
        TURN shared secret is configured."""
        secret = self.config.turn_secret
        if not secret:
            return self.config.ice_servers
        out = []
        for server in self.config.ice_servers:
            if server.username is None and any(u.lower().startswith("turn") for u in server.urls):
                user, password = mint_turn_credentials(
                    secret, peer_id, self.config.turn_ttl_seconds, self.clock() // 1000
                )
                out.append(IceServer(server.urls, user, password))
            else:
                out.append(server)
        return tuple(out)

    async def create_room(
        self, room_id: str, *, max_peers: int | None = None, metadata: dict[str, Any] | None = None
    ) -> RoomSnapshot:
        """Create an empty room. Raises RoomExists if it is there already."""
        room_id = validate_id(room_id, "roomId")
        if max_peers is None:
            max_peers = self.config.max_peers_per_room
        if not isinstance(max_peers, int) or isinstance(max_peers, bool) or not 1 <= max_peers <= 1000:
            raise InvalidRequest("maxPeers must be an integer from 1 to 1000.")
        metadata = validate_metadata(
            metadata, max_bytes=self.config.max_metadata_bytes, max_depth=self.config.max_json_depth
        )
        snapshot = await self.backend.create_room(
            room_id, max_peers, metadata, self.clock(), max_rooms=self.config.max_rooms
        )
        log.info("room %s created (max %d peers)", room_id, max_peers)
        self.emit(ev.ROOM_CREATED, ev.RoomCreated(snapshot))
        return snapshot

    async def connect_peer(
        self,
        room_id: str,
        peer_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        proof: str | None = None,
        auth_token: str | None = None,
        address: str | None = None,
    ) -> Connect:
        """Join ``peer_id`` (generated when None) to ``room_id``, creating the room when needed.

        ``proof`` is the peer's earlier token: with it, a taken id is replaced (the old channel is
        closed with reason ``replaced``) instead of refused. ``auth_token`` is the connect JWT when
        the server has an ``auth_secret``. ``address`` is the client's network address: one
        address may hold at most ``max_rooms_per_address`` rooms it created (429 past that).
        """
        try:
            connect = await self._connect(
                room_id, peer_id, metadata, proof=proof, auth_token=auth_token, address=address
            )
        except RtcError as err:
            RelayCounters.add(self.counters.connects, err.code)
            raise
        RelayCounters.add(self.counters.connects, "ok")
        return connect

    async def _connect(
        self,
        room_id: str,
        peer_id: str | None,
        metadata: dict[str, Any] | None,
        *,
        proof: str | None,
        auth_token: str | None,
        address: str | None,
    ) -> Connect:
        if self._draining:
            raise Draining()
        room_id = validate_id(room_id, "roomId")
        if peer_id is not None:
            peer_id = validate_id(peer_id, "peerId")
        trusted = False
        if self.config.auth_secret:
            peer_id = validate_id(verify_connect_jwt(auth_token, self.config.auth_secret, room_id, peer_id), "sub")
            trusted = True
        if peer_id is None:
            peer_id = "peer-" + new_peer_token()[:12].replace("_", "x").replace("-", "x")
        metadata = validate_metadata(
            metadata, max_bytes=self.config.max_metadata_bytes, max_depth=self.config.max_json_depth
        )
        now = self.clock()
        may_create = address is None or await self._may_create_room(address)
        try:
            outcome = await self.backend.join(
                room_id,
                peer_id,
                metadata,
                now,
                token=new_peer_token(),
                proof=proof,
                trusted=trusted,
                default_max_peers=self.config.max_peers_per_room,
                max_rooms=self.config.max_rooms,
                max_peers=self.config.max_peers,
                may_create=may_create,
            )
        except RoomNotFound:
            if may_create:
                raise
            limit = self.config.max_rooms_per_address
            log.warning("room %s not created for %s: that address holds %d rooms already", room_id, address, limit)
            raise RateLimited(
                f"This address already holds {limit} rooms; leave some before creating more (joining existing "
                "rooms still works)."
            ) from None
        if outcome.room_created:
            log.info("room %s created by peer %s", room_id, peer_id)
            if address is not None and self.config.max_rooms_per_address:
                self._rooms_by_address.setdefault(address, set()).add(room_id)
                self._room_creator[room_id] = address
            if self.heard(ev.ROOM_CREATED):
                self.emit(ev.ROOM_CREATED, ev.RoomCreated(outcome.room))
        others = [p.peer_id for p in outcome.room.peers if p.peer_id != peer_id and not is_server_peer(p.peer_id)]
        if outcome.replaced:
            log.info("peer %s in room %s reconnected; old channel replaced", peer_id, room_id)
            old = self.hub.detach(room_id, peer_id)
            if old is not None:
                await old.close(CloseCode.REPLACED, "replaced")
            message = peer_disconnected_message(room_id, peer_id, LeaveReason.REPLACED)
            await self._broadcast(room_id, others, message)
            self.emit(ev.PEER_DISCONNECTED, ev.PeerDisconnected(room_id, peer_id, LeaveReason.REPLACED))
        log.info(
            "peer %s connected to room %s (%d peers)",
            peer_id,
            room_id,
            len(others) + 1,
            extra={"room": room_id, "peer": peer_id},
        )
        await self._broadcast(room_id, others, peer_connected_message(room_id, outcome.peer.to_wire()))
        if self.heard(ev.PEER_CONNECTED):
            self.emit(ev.PEER_CONNECTED, ev.PeerConnected(room_id, outcome.peer))
        return Connect(
            room_id=room_id,
            peer_id=peer_id,
            token=outcome.token,
            ice_servers=self.ice_servers_for(peer_id),
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            peer_timeout_ms=self.config.peer_timeout_ms,
            peers=tuple(p for p in outcome.room.peers if p.peer_id != peer_id),
            room=outcome.room,
            replaced=outcome.replaced,
        )

    async def _may_create_room(self, address: str) -> bool:
        limit = self.config.max_rooms_per_address
        rooms = self._rooms_by_address.get(address)
        if not limit or rooms is None or len(rooms) < limit:
            return True
        # Rooms closed through another process (Redis) are not seen here: look, now and then.
        now = time.monotonic()
        if now - self._rooms_checked.get(address, 0.0) >= 5.0:
            self._rooms_checked[address] = now
            for room_id in list(rooms):
                try:
                    await self.backend.snapshot(room_id)
                except RoomNotFound:
                    self._forget_room(room_id)
        return len(self._rooms_by_address.get(address, ())) < limit

    def _forget_room(self, room_id: str) -> None:
        address = self._room_creator.pop(room_id, None)
        if address is None:
            return
        rooms = self._rooms_by_address.get(address)
        if rooms is not None:
            rooms.discard(room_id)
            if not rooms:
                del self._rooms_by_address[address]
                self._rooms_checked.pop(address, None)

    async def heartbeat(self, room_id: str, peer_id: str) -> int:
        """Mark the peer alive; returns its last-seen time (ms)."""
        last_seen = await self.backend.touch(room_id, peer_id, self.clock())
        if self.has_listeners(ev.PEER_HEARTBEAT):
            self.emit(ev.PEER_HEARTBEAT, ev.PeerHeartbeat(room_id, peer_id, last_seen))
        return last_seen

    async def relay(self, room_id: str, from_peer_id: str, signal: Signal | dict[str, Any]) -> RelayResult:
        """Send ``signal`` from a member to ``signal.to`` or to every other member.

        Delivered means a live channel took it; queued means it waits in the recipient's outbox.
        """
        outcome = await self.submit_relay(room_id, from_peer_id, signal)
        return outcome if isinstance(outcome, RelayResult) else await outcome

    async def submit_relay(
        self, room_id: str, from_peer_id: str, signal: Signal | dict[str, Any]
    ) -> RelayResult | asyncio.Future[RelayResult]:
        """:meth:`relay` for a transport that reads ahead: it returns once the signal is checked
        and on its way, in order after the sender's earlier ones. That is the result itself when
        delivery is done (always with the memory backend), else a future of it (recipients on
        other processes, through Redis). Raises what ``relay`` raises before delivery."""
        outcome = self.relay_now(room_id, from_peer_id, signal)
        return outcome if isinstance(outcome, RelayResult) else await outcome

    def relay_now(
        self, room_id: str, from_peer_id: str, signal: Signal | dict[str, Any]
    ) -> RelayResult | Coroutine[Any, Any, RelayResult | asyncio.Future[RelayResult]]:
        """:meth:`submit_relay` without a coroutine where none is needed: the result when the
        signal was delivered at once (most relays: to a member with a socket here, on the memory
        backend), else a coroutine of ``submit_relay``'s answer, which the caller must await.
        Raises what ``submit_relay`` raises before delivery, at once."""
        try:  # free when nothing is raised (Python 3.11); counts the relays refused, by error code
            # (a transport's Signal is checked already: no call for it)
            sig = signal if type(signal) is Signal else validate_signal(signal, max_depth=self.config.max_json_depth)
            now = self.clock()
            if self.config.rate_limit_per_sec > 0 and not self._take_token(room_id, from_peer_id, now):
                limit = self.config.rate_limit_per_sec
                raise RateLimited(f"Peer {from_peer_id!r} is sending faster than {limit:g} messages/s.")
            message: dict[str, Any] | None = None
            if sig.payload_json is None:
                message = signal_message(room_id, from_peer_id, sig, now)
                text = dumps_client_value(message, "signal")
            else:
                # The payload as the transport has it (valid JSON it just parsed) instead of encoding
                # it again; the other fields are validated ids and types, safe in quotes.
                to_part = "" if sig.to is None else f',"to":"{sig.to}"'
                text = (
                    f'{{"type":"signal","roomId":"{room_id}","fromPeerId":"{from_peer_id}",'
                    f'"signal":{{"type":"{sig.type}","payload":{sig.payload_json}{to_part}}},"ts":{now}}}'
                )
            if len(text) > self.config.max_signal_bytes and len(text.encode()) > self.config.max_signal_bytes:
                raise PayloadTooLarge(f"The signal is larger than {self.config.max_signal_bytes} bytes.")
            to = sig.to
            # Most relays: to a member with a socket here, on the memory backend: done now, without
            # the envelope, the report or a coroutine of the backend's.
            if to is not None and self.backend.push_now(room_id, from_peer_id, to, text):
                return self._relayed_to(room_id, from_peer_id, sig, now, to)
        except RtcError as err:
            self._refused(err)
            raise
        return self._submit(room_id, from_peer_id, sig, now, Envelope(message, text, now, from_peer_id))

    async def _submit(
        self, room_id: str, from_peer_id: str, sig: Signal, now: int, envelope: Envelope
    ) -> RelayResult | asyncio.Future[RelayResult]:
        """The rest of :meth:`relay_now`: through the backend (or to a server peer)."""
        try:
            to = sig.to
            if to is not None and is_server_peer(to):
                await self.backend.recipients(room_id, from_peer_id, None)  # sender must be a member
                if self.hub.server_peer(to) is None:
                    raise PeerNotFound(f"This server has no server peer {to!r}.")
                await self.hub.push_local(room_id, to, envelope)
                return self._relayed(room_id, from_peer_id, sig, now, DeliveryReport([to]))
            later = _LaterRelay(self, room_id, from_peer_id, sig, now)
            report = await self.backend.submit(
                room_id, from_peer_id, to, envelope, outbox_max=self.config.outbox_max, now=now, then=later
            )
            if report is not None:
                return self._relayed(room_id, from_peer_id, sig, now, report)
            later.result = asyncio.get_running_loop().create_future()
            return later.result
        except RtcError as err:
            self._refused(err)
            raise

    def _refused(self, err: RtcError) -> None:
        counts = self.counters.refused
        counts[err.code] = counts.get(err.code, 0) + 1

    def _relayed_to(self, room_id: str, from_peer_id: str, sig: Signal, now: int, to: str) -> RelayResult:
        """:meth:`_relayed` for a signal one peer took, and nobody else was to get (most relays)."""
        # counters.relayed(), inlined: this runs for every message
        counts = self.counters.signals.get(sig.type) or self.counters.slot(sig.type)
        counts[0] += 1
        # Results are immutable, so each peer's is made once.
        result = self._delivered_to.get(to)
        if result is None:
            if len(self._delivered_to) >= _RESULTS_KEPT:
                self._delivered_to.clear()
            result = self._delivered_to[to] = RelayResult((to,), ())
        if self._handlers.get(ev.SIGNAL):  # has_listeners(), inlined
            self.emit(ev.SIGNAL, ev.SignalRelayed(room_id, from_peer_id, sig, now, result.delivered, result.queued))
        return result

    def _relayed(self, room_id: str, from_peer_id: str, sig: Signal, now: int, report: DeliveryReport) -> RelayResult:
        delivered = report.delivered
        if len(delivered) == 1 and not report.queued and not report.dropped:
            return self._relayed_to(room_id, from_peer_id, sig, now, delivered[0])
        counts = self.counters.signals.get(sig.type) or self.counters.slot(sig.type)
        counts[0] += len(delivered)
        counts[1] += len(report.queued)
        counts[2] += len(report.dropped)
        result = RelayResult(tuple(delivered), tuple(report.queued), tuple(report.dropped))
        if report.dropped:
            self.dropped_messages += len(report.dropped)
            log.debug(
                "signal from %s in room %s not kept for %s: outbox full",
                from_peer_id,
                room_id,
                ", ".join(report.dropped),
            )
        if self.has_listeners(ev.SIGNAL):
            self.emit(ev.SIGNAL, ev.SignalRelayed(room_id, from_peer_id, sig, now, result.delivered, result.queued))
        return result

    async def disconnect_peer(self, room_id: str, peer_id: str, reason: str = LeaveReason.LEFT) -> bool:
        """Remove a peer; tells the room and closes the room when it empties. False if absent."""
        outcome = await self.backend.leave(room_id, peer_id)
        if outcome is None:
            return False
        await self._after_leave(outcome, reason)
        return True

    async def get_room_snapshot(self, room_id: str) -> RoomSnapshot:
        snapshot = await self.backend.snapshot(room_id)
        media = self.room_media(room_id) if self.room_media is not None else None
        return dataclasses.replace(snapshot, media=media) if media is not None else snapshot

    async def authenticate(self, token: str | None) -> tuple[str, str]:
        """The (room_id, peer_id) a peer token stands for; raises Unauthorized."""
        if not token:
            raise Unauthorized("A peer token is required: send Authorization: Bearer <token> from connect.")
        return await self.backend.resolve(token)

    async def authorize(
        self, token: str | None, room_id: str | None = None, peer_id: str | None = None
    ) -> tuple[str, str]:
        """The (room_id, peer_id) a peer token stands for, which must be ``room_id`` and
        ``peer_id`` when they are given: a peer may only act as itself. Raises Unauthorized (no
        or unknown token) or Forbidden (another peer's token). Every transport calls this."""
        room, peer = await self.authenticate(token)
        if (room_id is not None and room_id != room) or (peer_id is not None and peer_id != peer):
            raise Forbidden(f"This token belongs to peer {peer!r} in room {room!r}.")
        return room, peer

    async def authenticate_owner(self, token: str | None) -> tuple[str, str, str, bool]:
        """Who a media request comes from: ``(room_id, peer_id, owner_key, member)``.

        A peer token stands for a current member (``member`` True: what it opens ends when the
        peer leaves). Under a JWT gate a connect JWT is accepted too (``member`` False), so a
        publisher that is no room member (a WHIP encoder) can prove who it is. ``owner_key`` binds
        what the caller makes to a credential the next holder of the same peer id cannot have
        (:meth:`owner_key`). Raises Unauthorized."""
        secret = self.config.auth_secret
        if secret and token and looks_like_jwt(token):
            room_id, peer_id = verify_jwt_identity(token, secret)
            room_id, peer_id = validate_id(room_id, "room"), validate_id(peer_id, "sub")
            return room_id, peer_id, self.owner_key(room_id, peer_id, token), False
        room_id, peer_id = await self.authenticate(token)
        assert token is not None
        return room_id, peer_id, self.owner_key(room_id, peer_id, token), True

    def owner_key(self, room_id: str, peer_id: str, token: str) -> str:
        """The key that owns what a peer makes (media sessions, recordings): its token's hash, or,
        under a JWT gate where ids are authenticated, its identity (kept across reconnects)."""
        secret = self.config.auth_secret
        return identity_owner_key(secret, room_id, peer_id) if secret else token_owner_key(token)

    async def member_owner_key(self, room_id: str, peer_id: str) -> str | None:
        """:meth:`owner_key` of a current member, from its token; None when it is not one."""
        secret = self.config.auth_secret
        if secret:
            return identity_owner_key(secret, room_id, peer_id)
        token = await self.backend.member_token(room_id, peer_id)
        return None if token is None else token_owner_key(token)

    # -- channels -------------------------------------------------------------------------------

    async def attach_channel(self, room_id: str, peer_id: str, channel: Channel) -> None:
        """Make ``channel`` the peer's live channel and flush its outbox into it."""
        old = self.hub.attach(room_id, peer_id, channel)
        if old is not None:
            await old.close(CloseCode.REPLACED, "replaced by a newer connection")
        for envelope in await self.backend.take_outbox(room_id, peer_id):
            if not channel.send(envelope.text):
                break

    def detach_channel(self, room_id: str, peer_id: str, channel: Channel) -> None:
        self.hub.detach(room_id, peer_id, channel)

    async def poll(
        self, room_id: str, peer_id: str, wait_ms: int, alive: Callable[[], bool] | None = None
    ) -> list[str]:
        """Long-poll: queued messages now, or the first one to arrive within ``wait_ms``.

        ``alive`` tells whether the poll can still be answered (the transport's connection is
        open): while it says no, messages are not handed to this poll but stay queued. A transport
        that fails to write what it got gives it back with :meth:`undelivered`."""
        await self.heartbeat(room_id, peer_id)
        waiting = await self.backend.take_outbox(room_id, peer_id)
        if waiting or wait_ms <= 0:
            return [e.text for e in waiting]
        channel = PollChannel(alive)
        old = self.hub.attach(room_id, peer_id, channel)
        if old is not None:
            await old.close(CloseCode.REPLACED, "replaced by a newer poll")
        try:
            return await channel.wait(min(wait_ms, self.config.poll_max_wait_ms) / 1000)
        finally:
            self.hub.detach(room_id, peer_id, channel)

    async def undelivered(self, room_id: str, peer_id: str, texts: list[str]) -> None:
        """Messages a transport took for a peer but could not write (the connection died just
        then): deliver them again, to the peer's live channel or its outbox, in order."""
        now = self.clock()
        for text in texts:
            envelope = _envelope_of(text, now)
            try:
                await self.backend.deliver(room_id, [peer_id], envelope, outbox_max=self.config.outbox_max, now=now)
            except RtcError as err:  # the peer left meanwhile, or the backend is down
                log.info("message to %s in room %s not re-queued: %s", peer_id, room_id, err.message)
                return
        log.info("%d messages to %s in room %s re-queued (the poll's connection died)", len(texts), peer_id, room_id)

    async def send_to_peer(self, room_id: str, peer_id: str, message: dict[str, Any]) -> bool:
        """Push a server message to one peer (channel or outbox); False if it is not a member."""
        now = self.clock()
        try:
            report = await self.backend.deliver(
                room_id, [peer_id], Envelope(message, dumps(message), now), outbox_max=self.config.outbox_max, now=now
            )
        except RtcError:
            return False
        return bool(report.delivered or report.queued)

    # -- server peers (the media layer's hooks) -------------------------------------------------

    def register_server_peer(self, peer_id: str, handler: ServerPeerHandler) -> None:
        """Route every signal ``to`` ``peer_id`` (an ``@`` id) in any room to ``handler``."""
        self.hub.register_server_peer(validate_id(peer_id, "peerId", allow_server=True), handler)

    def unregister_server_peer(self, peer_id: str) -> None:
        self.hub.unregister_server_peer(peer_id)

    async def add_server_peer(self, room_id: str, peer_id: str) -> bool:
        """List a server peer in a room's snapshot while one of its sessions lives there."""
        return await self.backend.add_server_peer(room_id, peer_id, self.clock())

    async def remove_server_peer(self, room_id: str, peer_id: str) -> bool:
        return await self.backend.remove_server_peer(room_id, peer_id)

    async def signal_from_server_peer(
        self, room_id: str, server_peer_id: str, to_peer_id: str, signal: Signal | dict[str, Any]
    ) -> bool:
        """Send a signal from a server peer to one member."""
        sig = validate_signal(signal)
        return await self.send_to_peer(room_id, to_peer_id, signal_message(room_id, server_peer_id, sig, self.clock()))

    # -- internals ------------------------------------------------------------------------------

    def _take_token(self, room_id: str, peer_id: str, now: int) -> bool:
        key = (room_id, peer_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.config.rate_limit_per_sec, self.config.rate_limit_burst, now)
        return bucket.take(now)

    async def _broadcast(self, room_id: str, peer_ids: list[str] | tuple[str, ...], message: dict[str, Any]) -> None:
        if not peer_ids:
            return
        now = self.clock()
        await self.backend.deliver(
            room_id, list(peer_ids), Envelope(message, dumps(message), now), outbox_max=self.config.outbox_max, now=now
        )

    async def _after_leave(self, outcome: LeaveOutcome, reason: str) -> None:
        room_id, peer_id = outcome.room_id, outcome.peer.peer_id
        self._buckets.pop((room_id, peer_id), None)
        RelayCounters.add(self.counters.disconnects, reason)
        log.info("peer %s left room %s (%s)", peer_id, room_id, reason, extra={"room": room_id, "peer": peer_id})
        message = peer_disconnected_message(room_id, peer_id, reason)
        await self._broadcast(room_id, outcome.remaining, message)
        channel = self.hub.detach(room_id, peer_id)
        if channel is not None:
            await channel.close(CloseCode.LEFT if reason == LeaveReason.LEFT else CloseCode.REMOVED, reason)
        await self._tell_server_peers(room_id, message)
        if self.heard(ev.PEER_DISCONNECTED):
            self.emit(ev.PEER_DISCONNECTED, ev.PeerDisconnected(room_id, peer_id, reason))
        if outcome.room_closed:
            self._forget_room(room_id)
            log.info("room %s closed (empty)", room_id)
            if self.heard(ev.ROOM_CLOSED):
                self.emit(ev.ROOM_CLOSED, ev.RoomClosed(room_id))

    async def _tell_server_peers(self, room_id: str, message: dict[str, Any]) -> None:
        """Server peers hear of departures so they can end the sessions the peer owned."""
        await self.hub.tell_server_peers(room_id, message)

    async def reap(self) -> int:
        """One reaper pass: drop silent peers and expired outbox items. Returns peers reaped."""
        now = self.clock()
        reaped = 0
        for room_id, peer_id in await self.backend.expired_peers(now, self.config.peer_timeout_ms):
            channel = self.hub.channel(room_id, peer_id)
            if isinstance(channel, PollChannel) and channel.alive():
                continue  # a waiting long-poll is liveness
            outcome = await self.backend.leave(room_id, peer_id)
            if outcome is not None:  # another process may have reaped it first
                reaped += 1
                log.info(
                    "peer %s in room %s timed out after %d ms of silence", peer_id, room_id, self.config.peer_timeout_ms
                )
                await self._after_leave(outcome, LeaveReason.TIMEOUT)
        for notice in await self.backend.expire_outboxes(now, self.config.outbox_ttl_ms):
            sender = notice.envelope.from_peer_id
            if sender is None:
                continue
            log.info("message from %s to %s in room %s expired undelivered", sender, notice.to_peer_id, notice.room_id)
            await self.send_to_peer(
                notice.room_id,
                sender,
                error_message(
                    "undelivered",
                    f"A message to {notice.to_peer_id} expired before it was picked up.",
                    peerId=notice.to_peer_id,
                    ts=notice.envelope.ts,
                ),
            )
        return reaped

    async def _reap_forever(self) -> None:
        interval = self.config.reaper_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reaper pass failed; trying again in %.2f s", interval)

    async def stats(self) -> dict[str, Any]:
        rooms, peers = await self.backend.counts()
        return {
            "rooms": rooms,
            "peers": peers,
            "channels": len(self.hub),
            "queuedBytes": await self.backend.queued_bytes(),
            "droppedMessages": self.dropped_messages,
        }


def _envelope_of(text: str, now: int) -> Envelope:
    """An envelope for a message known only by its text (its sender and time read back from it)."""
    try:
        message = json.loads(text)
    except ValueError:
        return Envelope(None, text, now)
    if not isinstance(message, dict):
        return Envelope(None, text, now)
    ts = message.get("ts")
    sender = message.get("fromPeerId") if message.get("type") == "signal" else None
    return Envelope(message, text, ts if isinstance(ts, int) else now, sender if isinstance(sender, str) else None)


def create_rtc_server(
    config: RtcConfig | None = None, *, backend: Backend | None = None, clock: Clock | None = None, **overrides: Any
) -> RtcServer:
    """Make an :class:`RtcServer`. ``overrides`` are :class:`RtcConfig` fields, e.g.
    ``create_rtc_server(max_peers_per_room=4, ice_servers=["stun:stun.example.org"])``."""
    config = config or RtcConfig()
    if overrides:
        config = config.replace(**overrides)
    return RtcServer(config, backend=backend, clock=clock)
