"""The Redis backend: several server processes acting as one.

Rooms, peers, tokens, last-seen times and outboxes live in Redis; every rule that reads and then
writes shared state runs in one Lua script (:mod:`._redis_scripts`), so capacity and id checks are
atomic across processes. Messages cross processes by pub/sub: each process subscribes to its own
channel and keeps a *presence* entry (peer -> process) for every peer whose live channel
(WebSocket or waiting long-poll) it holds. A message for a peer with no live channel anywhere, or
whose holder is gone (nobody listens on its channel any more), goes to the peer's outbox in Redis,
ordered by a per-peer sequence number, and is drained when the peer attaches a channel on any
process.

When Redis is unreachable every call fails fast with :class:`CapacityExceeded` (503) while a
background task reconnects with backoff; :meth:`RedisBackend.health` says so.

This is the only module that imports ``redis`` (the ``[redis]`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import CapacityExceeded, PeerIdTaken, PeerNotFound, RoomExists, RoomFull, RoomNotFound, Unauthorized
from ..protocol import CloseCode, LeaveReason, is_server_peer, peer_disconnected_message
from ..rooms import PeerInfo, RoomSnapshot
from . import _redis_scripts as scripts
from ._base import Backend, DeliveryReport, DeliverySink, Envelope, JoinOutcome, LeaveOutcome, UndeliveredNotice

__all__ = ["RedisBackend"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]

#: Errors that mean "Redis is not reachable right now" (BusyLoadingError is a ConnectionError).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: What the blocking pool raises when no connection frees up in time: busy, not down.
_POOL_EXHAUSTED = "No connection available."


try:  # the [redis] extra brings hiredis; without it redis-py packs commands in Python
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - depends on the environment
    _hiredis_pack = None  # type: ignore[assignment]


class _FastPackConnection(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python; with hiredis this packs them in C
    (the largest client cost of a cross-process message)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _hiredis_pack is None or not args:
            return super().pack_command(*args)
        if isinstance(args[0], str) and " " in args[0]:  # "CLIENT SETINFO" and the like
            args = (*args[0].split(), *args[1:])
        return [_hiredis_pack(args)]


_Outgoing = tuple[str, str, int, list[str], str, Callable[[list[int] | BaseException], None]]


#: Seconds each step of :meth:`RedisBackend.close` after the queued messages may take.
CLOSE_STEP_S = 1.0


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes; a cancel always gets through.

    Not ``asyncio.wait_for(event.wait(), timeout)``: before Python 3.12, ``wait_for`` returns
    normally when its task is cancelled in the loop pass in which the event is set, and the cancel
    is lost. That lost cancel kept the refresher looping, and so :meth:`RedisBackend.close` and the
    whole process waiting, forever, when the shutdown came right after one of the listener's
    wake-ups, which come every backoff while Redis is down (the shutdown hang seen in CI)."""
    handle = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()


async def _end_within(tasks: Sequence[asyncio.Future[Any]], seconds: float, what: str) -> None:
    """Let ``tasks`` finish within ``seconds``, cancel those that do not and give them one more
    :data:`CLOSE_STEP_S`; one that still runs (it ignores cancellation) is logged and left."""
    pending = {t for t in tasks if not t.done()}
    if pending and seconds > 0:
        _, pending = await asyncio.wait(pending, timeout=seconds)
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=CLOSE_STEP_S)
    for task in pending:
        log.warning("redis backend close: a %s (%r) did not end when cancelled; leaving it", what, task)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("redis backend close: a %s failed", what, exc_info=task.exception())


def _call_safely(then: Callable[[Any], None], value: Any) -> None:
    try:
        then(value)
    except Exception:  # one caller's bug must not cost the rest of the batch their answers
        log.exception("a delivery callback failed")


def _tell(batch: list[_Outgoing], error: BaseException) -> None:
    for *_, then in batch:
        _call_safely(then, error)


class _Pending:
    """Messages held back for a peer while its outbox is being drained, so nothing newer
    overtakes what waited in the outbox."""

    __slots__ = ("items", "users")

    def __init__(self) -> None:
        self.items: list[tuple[str, Envelope]] = []  # (seq or "", envelope)
        self.users = 0


class RedisBackend(Backend):
    """Room state in Redis, delivery across processes by pub/sub.

    ``url`` is a ``redis://`` URL. Options: ``prefix`` (key namespace, default ``frtc:``; servers
    that should act as one use the same), ``socket_timeout`` and ``connect_timeout`` (seconds; a
    request never waits longer for Redis), ``refresh_interval`` (seconds between presence
    refreshes), ``process_ttl`` (seconds a process counts as alive after its last refresh),
    ``max_backoff`` (seconds between reconnect attempts at most), ``max_connections`` (pooled
    connections; more concurrent requests wait for one), ``process_id``.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "frtc:",
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        refresh_interval: float = 1.0,
        process_ttl: float = 5.0,
        max_backoff: float = 2.0,
        max_connections: int = 64,
        process_id: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.process_id = process_id or f"{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._refresh_interval = refresh_interval
        self._process_ttl_ms = int(process_ttl * 1000)
        self._max_backoff = max_backoff
        self._max_connections = max_connections
        self._channel = f"{prefix}ch:{self.process_id}"
        self._events = f"{prefix}events"
        self._client: aioredis.Redis | None = None
        self._sink: DeliverySink | None = None
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._up = False
        self._subscribed = False
        self._last_error: str | None = None
        self._wake = asyncio.Event()
        #: Peers whose presence this process claimed (it held their live channel then).
        self._local: set[Key] = set()
        self._pending: dict[Key, _Pending] = {}
        self._reap_deadlines: dict[Key, int] = {}
        self._repair_all = False
        self._batch: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        #: The delivery batch being filled: (room, body, outbox max, peers, seq, then).
        self._outgoing: list[_Outgoing] = []
        self._sender: asyncio.Future[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        #: Members of rooms this process relayed in, kept fresh by join/leave notices; only
        #: trusted while subscribed (a lost subscription may have missed notices).
        self._members: dict[str, frozenset[str]] = {}
        self._members_gen = 0
        #: Key expiry of outboxes: a safety net; the reaper expires items by their timestamp.
        self._outbox_key_ttl_ms = 600_000
        self._last_counts = (0, 0)
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, sink: DeliverySink) -> None:
        self._sink = sink
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._connect_timeout,
            # Requests fail fast; the monitor reconnects with backoff instead of each call retrying.
            retry=Retry(NoBackoff(), 0),
            # Bursts wait for a free connection (at most a socket timeout) instead of failing.
            max_connections=self._max_connections,
            timeout=self._socket_timeout,
            connection_class=_FastPackConnection,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        for name in scripts.__all__:
            self._scripts[name] = self._client.register_script(getattr(scripts, name))
        try:
            await self._refresh()
            self._set_up(True)
        except _UNREACHABLE as exc:
            self._set_down(exc)
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name=f"redis-listen-{self.process_id}"),
            asyncio.create_task(self._refresh_forever(), name=f"redis-refresh-{self.process_id}"),
        ]
        log.info(
            "redis backend started: process %s, prefix %r, %s",
            self.process_id,
            self.prefix,
            "connected" if self._up else "Redis unreachable, retrying",
        )

    async def close(self) -> None:
        """Stop listening, send what is queued for other processes, leave cleanly, disconnect.

        Bounded whatever Redis does (gone, restarting, hung): each step gets a few seconds at most
        (queued messages: the socket timeout; the rest: :data:`CLOSE_STEP_S`), then what still
        runs is cancelled and, if even that does not end it, logged and left behind."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await _end_within(self._tasks, 0, "background task")
        # Messages accepted for other processes go out if Redis takes them in time.
        queued = [t for t in (self._sender, *self._flushes) if t is not None]
        await _end_within(queued, self._socket_timeout, "delivery batch")
        client = self._client
        if client is not None:
            if self._up:
                # Leave cleanly: others stop routing here at once instead of after the TTL.
                await _end_within([asyncio.ensure_future(self._leave(client))], CLOSE_STEP_S, "leaving")
            closing = asyncio.ensure_future(client.aclose(close_connection_pool=True))
            await _end_within([closing], CLOSE_STEP_S, "disconnecting")
        self._local.clear()
        self._pending.clear()
        log.info("redis backend closed: process %s", self.process_id)

    async def _leave(self, client: aioredis.Redis) -> None:
        with contextlib.suppress(RedisError, OSError):
            releases = [part for key in self._local for part in key]
            await self._script("CLAIM", self.process_id, "", "check", len(self._local), *releases)
            await client.delete(f"{self.prefix}proc:{self.process_id}")

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "ok": self._up,
            "redis": "up" if self._up else "down",
            "subscribed": self._subscribed,
            "process": self.process_id,
            **({"error": self._last_error} if not self._up and self._last_error else {}),
        }

    def _set_up(self, up: bool) -> None:
        if up and not self._up:
            log.info("redis reachable again at %s (process %s)", self._safe_url(), self.process_id)
            self._last_error = None
        self._up = up

    def _set_down(self, exc: BaseException) -> None:
        self.errors += 1
        if self._up:
            log.warning("redis unreachable at %s (process %s): %s", self._safe_url(), self.process_id, exc)
        self._up = False
        self._last_error = str(exc) or type(exc).__name__
        self._wake.set()

    def _safe_url(self) -> str:
        return self.url.split("@")[-1]

    def _unavailable(self) -> CapacityExceeded:
        return CapacityExceeded("The shared state store (Redis) is unreachable; try again shortly.", retry_after=1)

    async def _guard(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call; fail fast with 503 while Redis is down."""
        if not self._up or self._client is None:
            raise self._unavailable()
        try:
            return await make()
        except _UNREACHABLE as exc:
            if isinstance(exc, RedisConnectionError) and str(exc) == _POOL_EXHAUSTED:
                raise CapacityExceeded("Too many requests wait for Redis; try again shortly.", retry_after=1) from exc
            self._set_down(exc)
            raise self._unavailable() from exc
        except RedisError as exc:  # Redis answered with an error (out of memory, ...): not our 500
            self.errors += 1
            log.warning("redis refused a command (process %s): %s", self.process_id, exc)
            raise CapacityExceeded("The shared state store (Redis) refused the request.", retry_after=1) from exc

    async def ping(self) -> float | None:
        client = self._client
        if client is None:
            return None
        started = time.perf_counter()
        await self._guard(client.ping)
        return time.perf_counter() - started

    async def _script(self, name: str, *args: Any) -> Any:
        """Run a script. Calls made in the same loop iteration share one pipelined round trip
        (auto-pipelining): under load that costs far less client CPU than one call each."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((name, (self.prefix, *args), future))
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return await future

    def _flush_soon(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            task = asyncio.ensure_future(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        client = self._client
        assert client is not None
        try:
            async with client.pipeline(transaction=False) as pipe:
                for name, args, _ in batch:
                    pipe.evalsha(self._scripts[name].sha, 0, *args)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (name, args, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            value = result
            if isinstance(value, NoScriptError):  # Redis restarted: the script object reloads it
                try:
                    value = await self._scripts[name](args=args)
                except Exception as exc:
                    future.set_exception(exc)
                    continue
            if isinstance(value, Exception):
                future.set_exception(value)
            else:
                future.set_result(value)

    async def _evalsha(self, name: str, args: list[Any]) -> Any:
        """One script call on its own (the delivery batch is already one): redis-py's plain
        command path costs less per call than the auto-pipeline's."""
        client = self._client
        assert client is not None
        script = self._scripts[name]
        try:
            return await client.evalsha(script.sha, 0, self.prefix, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:  # Redis restarted: the script object loads it again
            return await script(args=(self.prefix, *args))

    async def _call(self, name: str, *args: Any) -> Any:
        return await self._guard(lambda: self._script(name, *args))

    # -- background tasks -----------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        backoff = 0.05
        while True:
            timeout = self._refresh_interval if self._up else backoff
            self._wake.clear()
            await _wait_event(self._wake, timeout)
            try:
                await self._refresh()
                self._set_up(True)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except _UNREACHABLE as exc:
                self._set_down(exc)
                backoff = min(self._max_backoff, backoff * 2) * (0.8 + 0.4 * random.random())
            except Exception:
                log.exception("presence refresh failed (process %s)", self.process_id)

    async def _refresh(self) -> None:
        """Mark this process alive, re-claim the peers whose channels it holds and drain their
        outboxes into them (this repairs what went to an outbox while Redis or our subscription
        was down), and release the peers it no longer holds."""
        sink = self._sink
        if sink is None or self._client is None:
            return
        held = [key for key in self._local if sink.has_local(*key)]
        held_set = set(held)
        released = [key for key in self._local if key not in held_set]
        if self._repair_all:
            # After a reconnect anything may have gone to outboxes: drain all, in order.
            self._repair_all = False
            try:
                await self._claim_and_drain(held, ttl=str(self._process_ttl_ms), releases=released)
            except BaseException:
                self._repair_all = True
                raise
        else:
            # The usual pass holds nothing back (no added latency); it drains only the peers
            # whose outbox may have received something.
            args: list[str] = [self.process_id, str(self._process_ttl_ms), "check", str(len(released))]
            for key in released:
                args.extend(key)
            for key in held:
                args.extend(key)
            flags = await self._script("CLAIM", *args)
            repair = [key for key, flag in zip(held, flags, strict=True) if flag]
            if repair:
                await self._claim_and_drain(repair)
        self._local.difference_update(released)

    async def _claim_and_drain(self, keys: list[Key], *, ttl: str = "", releases: list[Key] | None = None) -> None:
        """Claim presence for ``keys``, drain their outboxes and push what waited into the local
        channels; messages arriving meanwhile are held behind them."""
        releases = releases or []
        for key in keys:
            self._hold(key)
        args: list[str] = [self.process_id, ttl, "drain", str(len(releases))]
        for key in releases:
            args.extend(key)
        for key in keys:
            args.extend(key)
        try:
            raw = await self._script("CLAIM", *args)
        except asyncio.CancelledError:
            for key in keys:
                self._release_hold(key)
            raise
        except Exception:
            for key in keys:
                await self._push_in_order(key, self._release_hold(key))
            raise
        for key, items in zip(keys, raw, strict=True):
            waited = [_parse_item(item) for item in items]
            await self._push_in_order(key, waited + self._release_hold(key))

    async def _push_in_order(self, key: Key, items: list[tuple[str, Envelope]]) -> None:
        sink = self._sink
        assert sink is not None
        for index, (_seq, env) in enumerate(items):
            if not await sink.push_local(key[0], key[1], env):
                for seq2, env2 in items[index:]:
                    await self._requeue(key, seq2, env2)
                return

    async def _listen_forever(self) -> None:
        backoff = 0.05
        while True:
            client = self._client
            assert client is not None
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel, self._events)
                # subscribe() only sends the command: listen only once Redis confirmed both, or
                # the re-drain below could run before messages reach us and miss some.
                confirmed = 0
                while confirmed < 2:
                    reply = await pubsub.get_message(timeout=self._socket_timeout)
                    if reply is None:
                        raise RedisTimeoutError("no subscribe confirmation from Redis")
                    if reply.get("type") == "subscribe":
                        confirmed += 1
                self._subscribed = True
                self._forget_members(None)
                self._repair_all = True
                # What was published while we were not listening went to outboxes: re-drain now.
                self._wake.set()
                backoff = 0.05
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        try:
                            await self._on_message(cast(str, message["data"]))
                        except (asyncio.CancelledError, *_UNREACHABLE):
                            raise
                        except Exception:  # one bad message must not cost the subscription
                            log.exception("message on %s failed (process %s)", self._channel, self.process_id)
            except asyncio.CancelledError:
                raise
            except _UNREACHABLE as exc:
                if self._subscribed:
                    log.warning("redis subscription lost (process %s): %s", self.process_id, exc)
                # Requests go on if Redis still answers (what is published meanwhile waits in
                # outboxes, drained once we listen again); the refresher finds out at once.
                self._wake.set()
            except Exception:
                log.exception("redis listener failed (process %s)", self.process_id)
            finally:
                self._subscribed = False
                self._forget_members(None)
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(self._max_backoff, backoff * 2) * (0.8 + 0.4 * random.random())

    async def _on_message(self, data: str) -> None:
        if data.startswith("!"):  # control notices; messages start with a room id
            await self._on_control(data[1:].split("\t"))
            return
        sink = self._sink
        assert sink is not None
        for line in data.split("\n"):  # one line per message (see the DELIVER script)
            room_id, peer_id, seq, body = line.split("\t", 3)
            envelope = _parse_body(body)
            key = (room_id, peer_id)
            pending = self._pending.get(key)
            if pending is not None:
                pending.items.append((seq, envelope))
            elif not (
                sink.push_channel(room_id, peer_id, envelope.text)
                or (is_server_peer(peer_id) and await sink.push_local(*key, envelope))
            ):
                # Our channel for the peer closed since it was claimed: back to its outbox, in order.
                await self._requeue(key, seq, envelope)

    def _forget_members(self, room_id: str | None) -> None:
        self._members_gen += 1
        if room_id is None:
            self._members.clear()
        else:
            self._members.pop(room_id, None)

    async def _on_control(self, parts: list[str]) -> None:
        sink = self._sink
        if parts[0] in ("joined", "left") and len(parts) == 4:
            self._forget_members(parts[2])
        if parts[0] == "joined":
            return
        if parts[0] == "replaced" and len(parts) == 3:
            room_id, peer_id = parts[1], parts[2]
            self._local.discard((room_id, peer_id))
            channel = sink.detach(room_id, peer_id) if sink is not None else None
            if channel is not None:
                log.info("peer %s in room %s reconnected elsewhere; old channel replaced", peer_id, room_id)
                await channel.close(CloseCode.REPLACED, "replaced")
        elif parts[0] == "left" and len(parts) == 4 and parts[1] != self.process_id and sink is not None:
            # The peer left (or was reaped) through another process: close its channel here, as
            # the facade does on its own process, and tell our server peers so its sessions end.
            room_id, peer_id = parts[2], parts[3]
            self._local.discard((room_id, peer_id))
            channel = sink.detach(room_id, peer_id)
            if channel is not None:
                log.info("peer %s in room %s left through another process; closing its channel", peer_id, room_id)
                await channel.close(CloseCode.REMOVED, "disconnected")
            message = peer_disconnected_message(room_id, peer_id, LeaveReason.LEFT)
            for server_peer_id in sink.server_peer_ids():
                await sink.push_local(room_id, server_peer_id, Envelope(message, "", 0))

    async def _publish(self, channel: str, data: str) -> int:
        client = self._client
        return await self._guard(lambda: cast(Awaitable[int], client.publish(channel, data)))  # type: ignore[union-attr]

    async def _requeue(self, key: Key, seq: str, envelope: Envelope) -> None:
        try:
            await self._routed(key[0], [key[1]], envelope, -1, seq)  # accepted already: no limit
        except (CapacityExceeded, *_UNREACHABLE):
            log.warning("message to %s in room %s lost: redis unreachable while re-queuing", key[1], key[0])

    # -- pending holds --------------------------------------------------------------------------

    def _hold(self, key: Key) -> None:
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        pending.users += 1

    def _release_hold(self, key: Key) -> list[tuple[str, Envelope]]:
        pending = self._pending.get(key)
        if pending is None:
            return []
        items, pending.items = pending.items, []
        pending.users -= 1
        if pending.users <= 0:
            del self._pending[key]
        return items

    # -- rooms and peers ------------------------------------------------------------------------

    async def create_room(
        self, room_id: str, max_peers: int, metadata: dict[str, Any], now: int, *, max_rooms: int
    ) -> RoomSnapshot:
        res = await self._call("CREATE_ROOM", room_id, max_peers, json.dumps(metadata), now, max_rooms)
        if res[0] == "exists":
            raise RoomExists(f"Room {room_id!r} already exists.")
        if res[0] == "capacity_rooms":
            raise CapacityExceeded(f"The server holds its maximum of {max_rooms} rooms.")
        return _snapshot(room_id, res[1])

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
        res = await self._call(
            "JOIN",
            room_id,
            peer_id,
            json.dumps(metadata),
            now,
            token,
            proof or "",
            "1" if trusted else "0",
            default_max_peers,
            max_rooms if may_create else 0,  # no room may be created: the script says capacity_rooms
            max_peers,
            self.process_id,
        )
        status = res[0]
        if status == "ok":
            self._forget_members(room_id)  # here at once; other processes by the notice
        if status == "capacity_rooms" and not may_create:
            raise RoomNotFound(f"Room {room_id!r} does not exist.")
        if status == "capacity_rooms":
            raise CapacityExceeded(f"The server holds its maximum of {max_rooms} rooms.")
        if status == "capacity_peers":
            raise CapacityExceeded(f"The server holds its maximum of {max_peers} peers.")
        if status == "taken":
            raise PeerIdTaken(f"Peer id {peer_id!r} is already connected in room {room_id!r}.")
        if status == "full":
            raise RoomFull(f"Room {room_id!r} is full ({res[1]} peers).")
        snapshot = _snapshot(room_id, res[4])
        peer = next(p for p in snapshot.peers if p.peer_id == peer_id)
        replaced = bool(res[2])
        holder = res[5] if len(res) > 5 else None
        if replaced and holder and holder != self.process_id:
            # The old channel lives on another process: ask it to close it, as the facade does here.
            log.info("peer %s in room %s replaced; closing its old channel on process %s", peer_id, room_id, holder)
            await self._publish(f"{self.prefix}ch:{holder}", f"!replaced\t{room_id}\t{peer_id}")
        return JoinOutcome(peer, res[3], snapshot, bool(res[1]), replaced)

    async def leave(self, room_id: str, peer_id: str) -> LeaveOutcome | None:
        # A peer the reaper found silent is only removed if it is still silent: it may have sent a
        # heartbeat to another process since.
        deadline = self._reap_deadlines.pop((room_id, peer_id), None)
        res = await self._call("LEAVE", room_id, peer_id, self.process_id, "" if deadline is None else deadline)
        if res is None:
            return None
        record, seen, closed, remaining = res
        self._forget_members(room_id)
        self._local.discard((room_id, peer_id))
        info = _peer_info(peer_id, record, seen)
        return LeaveOutcome(info, room_id, tuple(remaining), bool(closed))

    async def touch(self, room_id: str, peer_id: str, now: int) -> int:
        self._reap_deadlines.pop((room_id, peer_id), None)
        res = await self._call("TOUCH", room_id, peer_id, now)
        if res[0] == "room":
            raise RoomNotFound(f"Room {room_id!r} does not exist.")
        if res[0] == "peer":
            raise PeerNotFound(f"Peer {peer_id!r} is not in room {room_id!r}.")
        return int(float(res[1]))

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        res = await self._call("SNAPSHOT", room_id)
        if res is None:
            raise RoomNotFound(f"Room {room_id!r} does not exist.")
        return _snapshot(room_id, res)

    async def resolve(self, token: str) -> tuple[str, str]:
        client = self._client
        found = await self._guard(lambda: cast(Awaitable[str | None], client.hget(f"{self.prefix}tokens", token)))  # type: ignore[union-attr]
        if not found:
            raise Unauthorized("Unknown or expired token: connect again.")
        room_id, _, peer_id = found.partition("/")
        return room_id, peer_id

    async def member_token(self, room_id: str, peer_id: str) -> str | None:
        client = self._client
        record = await self._guard(
            lambda: cast(Awaitable[str | None], client.hget(f"{self.prefix}peers:{room_id}", peer_id))  # type: ignore[union-attr]
        )
        return record.partition("\t")[0] if record else None

    async def recipients(self, room_id: str, from_peer_id: str, to: str | None) -> list[str]:
        members = self._members.get(room_id) if self._subscribed else None
        if members is None:
            generation = self._members_gen
            res = await self._call("RECIPIENTS", room_id, "", "")
            if res[0] == "room":
                raise RoomNotFound(f"Room {room_id!r} does not exist.")
            members = frozenset(res[1])
            # Keep it unless a join or leave was heard meanwhile (it may predate that change).
            if self._subscribed and generation == self._members_gen:
                self._members[room_id] = members
        if from_peer_id not in members:
            raise PeerNotFound(f"Peer {from_peer_id!r} is not in room {room_id!r}.")
        if to is None:
            return [pid for pid in members if pid != from_peer_id]
        if to not in members:
            raise PeerNotFound(f"Peer {to!r} is not in room {room_id!r}.")
        return [to]

    # -- delivery -------------------------------------------------------------------------------

    async def deliver(
        self, room_id: str, peer_ids: list[str], envelope: Envelope, *, outbox_max: int, now: int
    ) -> DeliveryReport:
        report, remote = await self._deliver_here(room_id, peer_ids, envelope)
        if remote:
            statuses = await self._routed(room_id, remote, envelope, outbox_max)
            _apply_statuses(report, remote, statuses)
        return report

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
        """Local recipients now; the others' messages join the ordered delivery batch and
        ``then`` gets the full report when Redis has routed them."""
        peer_ids = await self.recipients(room_id, from_peer_id, to)
        report, remote = await self._deliver_here(room_id, peer_ids, envelope)
        if not remote:
            return report

        def routed(statuses: list[int] | BaseException) -> None:
            if isinstance(statuses, BaseException):
                then(statuses)
            else:
                _apply_statuses(report, remote, statuses)
                then(report)

        self._deliver_remote(room_id, remote, envelope, outbox_max, then=routed)
        return None

    async def _deliver_here(
        self, room_id: str, peer_ids: list[str], envelope: Envelope
    ) -> tuple[DeliveryReport, list[str]]:
        """Deliver to this process's channels and server peers; returns who is left for Redis."""
        report = DeliveryReport()
        sink = self._sink
        remote: list[str] = []
        for peer_id in peer_ids:
            pending = self._pending.get((room_id, peer_id))
            if pending is not None:  # its outbox is being drained here: line up behind it
                pending.items.append(("", envelope))
                report.delivered.append(peer_id)
            elif sink is not None and (
                sink.push_channel(room_id, peer_id, envelope.text)
                or (is_server_peer(peer_id) and await sink.push_local(room_id, peer_id, envelope))
            ):
                report.delivered.append(peer_id)
            else:
                remote.append(peer_id)
        return report, remote

    def _deliver_remote(
        self,
        room_id: str,
        peer_ids: list[str],
        envelope: Envelope,
        outbox_max: int,
        *,
        then: Callable[[list[int] | BaseException], None],
        seq: str = "",
    ) -> None:
        """Queue a message for the delivery batch; ``then`` gets one status per peer (or the
        error), later, never before this returns.

        Batches go to Redis one after the other (the next is sent when the previous one's answer
        is in), so messages keep the order they were queued in: per sender and recipient, the
        order of one process. A batch is everything queued while the previous one was in flight:
        under load one ``EVALSHA`` and one pub/sub message per process carry many messages, and
        no future or task is made per message."""
        if not self._up:
            raise self._unavailable()
        self._outgoing.append((room_id, _body(envelope), outbox_max, peer_ids, seq, then))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_batches())

    def _routed(
        self, room_id: str, peer_ids: list[str], envelope: Envelope, outbox_max: int, seq: str = ""
    ) -> asyncio.Future[list[int]]:
        """:meth:`_deliver_remote` as a future."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        def then(statuses: list[int] | BaseException) -> None:
            if future.done():
                return
            if isinstance(statuses, BaseException):
                future.set_exception(statuses)
            else:
                future.set_result(statuses)

        self._deliver_remote(room_id, peer_ids, envelope, outbox_max, then=then, seq=seq)
        return future

    async def _send_batches(self) -> None:
        try:
            while self._outgoing:
                batch, self._outgoing = self._outgoing, []
                limits = self.outbox_limits
                args: list[Any] = [
                    self.process_id,
                    self._outbox_key_ttl_ms,
                    limits.max_bytes,
                    limits.total_max_bytes,
                ]
                for room_id, body, outbox_max, peer_ids, seq, _ in batch:
                    args.extend((room_id, body, outbox_max, len(peer_ids)))
                    for peer_id in peer_ids:
                        args.extend((peer_id, seq))
                try:
                    statuses = await self._guard(functools.partial(self._evalsha, "DELIVER", args))
                except asyncio.CancelledError as exc:
                    _tell(batch, exc)
                    raise
                except Exception as exc:  # Redis went away (503 for each) or refused
                    _tell(batch, exc)
                    continue
                at = 0
                for _room_id, _body_text, _omax, peer_ids, _seq, then in batch:
                    _call_safely(then, statuses[at : at + len(peer_ids)])
                    at += len(peer_ids)
        finally:
            self._sender = None

    async def take_outbox(self, room_id: str, peer_id: str) -> list[Envelope]:
        """Drain the outbox and claim the peer for this process: the caller is about to attach
        (or has attached) its live channel here, so later messages are published to us."""
        key = (room_id, peer_id)
        if not self._up:
            raise self._unavailable()
        self._hold(key)
        try:
            raw = await self._guard(lambda: self._script("CLAIM", self.process_id, "", "drain", "0", room_id, peer_id))
        except asyncio.CancelledError:
            self._release_hold(key)
            raise
        except Exception:
            await self._push_in_order(key, self._release_hold(key))
            raise
        self._local.add(key)
        waited = [env for _, env in map(_parse_item, raw[0])]
        return waited + [env for _, env in self._release_hold(key)]

    async def expired_peers(self, now: int, timeout_ms: int) -> list[tuple[str, str]]:
        if not self._up:
            return []  # the reaper retries on its next pass; no log spam while Redis is down
        client = self._client
        members = await self._guard(
            lambda: cast(
                Awaitable[list[str]],
                client.zrangebyscore(  # type: ignore[union-attr]
                    f"{self.prefix}seen", "-inf", f"({now - timeout_ms}", start=0, num=1000
                ),
            )
        )
        out = []
        self._reap_deadlines.clear()
        for member in members:
            room_id, _, peer_id = member.partition("/")
            out.append((room_id, peer_id))
            self._reap_deadlines[(room_id, peer_id)] = now - timeout_ms
        return out

    async def expire_outboxes(self, now: int, ttl_ms: int) -> list[UndeliveredNotice]:
        self._outbox_key_ttl_ms = max(60_000, 2 * ttl_ms + 10_000)
        if not self._up:
            return []
        res = await self._call("EXPIRE_OUTBOXES", now - ttl_ms, 1000)
        notices: list[UndeliveredNotice] = []
        for i in range(0, len(res), 2):
            room_id, _, peer_id = res[i].partition("/")
            for item in res[i + 1]:
                _, envelope = _parse_item(item)
                notices.append(UndeliveredNotice(room_id, peer_id, envelope))
        return notices

    async def add_server_peer(self, room_id: str, peer_id: str, now: int) -> bool:
        return bool(await self._call("ADD_SERVER_PEER", room_id, peer_id, self.process_id, now))

    async def remove_server_peer(self, room_id: str, peer_id: str) -> bool:
        client = self._client
        removed = await self._guard(
            lambda: cast(
                Awaitable[int],
                client.hdel(  # type: ignore[union-attr]
                    f"{self.prefix}srv:{room_id}", f"{peer_id}|{self.process_id}"
                ),
            )
        )
        return bool(removed)

    async def queued_bytes(self) -> int:
        client = self._client
        if client is None or not self._up:
            return 0
        try:
            value = await self._guard(lambda: cast(Awaitable[str | None], client.get(f"{self.prefix}obtotal")))
        except CapacityExceeded:
            return 0
        return max(0, int(value or 0))

    async def room_ids(self, limit: int) -> list[str]:
        client = self._client
        if client is None or not self._up:
            return []

        async def scan() -> list[str]:
            found: list[str] = []
            async for member in client.sscan_iter(f"{self.prefix}rooms", count=min(limit, 1000)):
                found.append(member.decode() if isinstance(member, bytes) else str(member))
                if len(found) >= limit:
                    break
            return found

        return await self._guard(scan)

    async def counts(self) -> tuple[int, int]:
        """(rooms, peers) across all processes; the last known values while Redis is unreachable,
        so ``/healthz`` can still answer (its ``backend`` part says Redis is down)."""
        client = self._client
        assert client is not None
        if not self._up:
            return self._last_counts

        async def both() -> tuple[int, int]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.scard(f"{self.prefix}rooms")
                pipe.get(f"{self.prefix}npeers")
                rooms, peers = await pipe.execute()
            return int(rooms), int(peers or 0)

        with contextlib.suppress(CapacityExceeded):
            self._last_counts = await self._guard(both)
        return self._last_counts


# -- encoding ------------------------------------------------------------------------------------


def _apply_statuses(report: DeliveryReport, peer_ids: list[str], statuses: list[int]) -> None:
    for peer_id, status in zip(peer_ids, statuses, strict=True):
        if status == 1:
            report.delivered.append(peer_id)
        elif status == 2:
            report.queued.append(peer_id)
        elif status == 3:
            report.dropped.append(peer_id)


def _body(envelope: Envelope) -> str:
    return f"{envelope.ts}\t{envelope.from_peer_id or ''}\t{envelope.text}"


def _parse_body(body: str) -> Envelope:
    ts, from_peer_id, text = body.split("\t", 2)
    return Envelope(None, text, int(ts), from_peer_id or None)


def _parse_item(item: str) -> tuple[str, Envelope]:
    seq, body = item.split("\t", 1)
    return seq, _parse_body(body)


def _peer_info(peer_id: str, record: str, seen: str) -> PeerInfo:
    _token, connected_at, metadata = record.split("\t", 2)
    return PeerInfo(peer_id, json.loads(metadata), int(connected_at), int(float(seen)))


def _snapshot(room_id: str, raw: list[Any]) -> RoomSnapshot:
    max_peers, metadata, created_at, peers_flat, servers_flat = raw
    peers = [_peer_info(peers_flat[i], peers_flat[i + 1], peers_flat[i + 2]) for i in range(0, len(peers_flat), 3)]
    peers.sort(key=lambda p: (p.connected_at, p.peer_id))
    listed: dict[str, int] = {}
    for i in range(0, len(servers_flat), 2):
        at = int(servers_flat[i + 1])
        listed[servers_flat[i]] = min(at, listed.get(servers_flat[i], at))
    peers.extend(PeerInfo(pid, {"server": True}, at, at) for pid, at in sorted(listed.items()))
    return RoomSnapshot(room_id, int(max_peers), json.loads(metadata or "{}"), int(created_at), tuple(peers))
