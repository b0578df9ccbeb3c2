"""``GET /rtc/ws``: a peer's WebSocket, and what its text frames do (signal, heartbeat, disconnect)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from .. import _json, logs
from .._aiohttp_compat import FrameWebSocketResponse, run_handler
from ..auth import looks_like_jwt
from ..errors import Draining, Forbidden, InvalidJson, InvalidRequest, RateLimited, RtcError
from ..protocol import CloseCode, LeaveReason, dumps, error_message, validate_id
from ..server import Connect, RelayResult, RtcServer
from ._channel import SOCKETS_KEY, WRITE_BATCH_KEY, SocketLike, WebSocketChannel
from ._requests import RTC_KEY, RequestLike, signal_of, token_from_request

__all__ = ["BINARY_REFUSED", "CLOSE_TIMEOUT", "PeerFrames", "admit", "connected_frame", "routes"]

log = logging.getLogger("fantasize_rtc.web")

routes = web.RouteTableDef()

CLOSE_TIMEOUT = 2.0  # seconds a client gets to answer our close frame

BINARY_REFUSED = b"binary frames are not supported"  # the reason of the 1003 close


def _check_origin(request: RequestLike, allowed: tuple[str, ...]) -> None:
    """With ``--cors-origin`` set, a browser's WebSocket must come from the page's own origin or
    an allowed one (browsers send Origin on every WebSocket, and CORS does not cover them)."""
    origin = request.headers.get("Origin")
    if not allowed or origin is None or "*" in allowed or origin in allowed:
        return
    if origin.partition("://")[2] == request.host:  # same origin (scheme checked by the browser)
        return
    raise Forbidden("This origin may not open the WebSocket (see --cors-origin).")


async def admit(request: RequestLike, rtc: RtcServer) -> tuple[str, str, Connect | None]:
    """Who may open this socket, before the upgrade: (room, peer, the join when the upgrade is
    the join). Raises the HTTP error to answer instead. Both ways in use it: aiohttp's route below
    and the lean upgrade of ``serve`` (``web._lean``)."""
    if rtc.draining:  # the socket belongs on a process that stays: 503, the client tries again
        raise Draining()
    _check_origin(request, rtc.config.cors_origins)
    if "roomId" in request.query:  # join in the upgrade itself: one round trip (docs/protocol.md)
        joined = await _join(request, rtc)
        return joined.room_id, joined.peer_id, joined
    room_id, peer_id = await rtc.authenticate(token_from_request(request))
    return room_id, peer_id, None


def connected_frame(joined: Connect) -> str:
    """The socket's first frame when the upgrade was the join: ``connect``'s answer (msgspec
    writes it when it can: the same JSON value as ``dumps``, several times faster)."""
    return _json.encode_bytes({"type": "connected", **joined.to_wire()}).decode()


@routes.get("/rtc/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    rtc = request.app[RTC_KEY]
    room_id, peer_id, joined = await admit(request, rtc)
    logs.bind(room=room_id, peer=peer_id)  # this request's task only; the middleware resets it
    # No permessage-deflate, although every browser offers it: with it, each peer holds a zlib
    # context (RSS per idle peer 18 KB -> 99 KB, BENCHMARKS.md) and each relayed offer costs
    # ~60 us of compression, twice the rest of the relay. Signals are small; PeerJS (ws) agrees.
    ws = FrameWebSocketResponse(max_msg_size=rtc.config.max_frame_bytes, timeout=CLOSE_TIMEOUT, compress=False)
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the client gave up during the handshake: nothing to serve
        log.info("peer %s in room %s left during the WebSocket handshake", peer_id, room_id)
        # not the half-prepared socket (aiohttp would try to close it); this answer is never sent
        return web.Response(status=400, text="client left during the handshake")
    transport = request.transport
    if transport is None:  # gone right after the handshake
        return ws
    channel = WebSocketChannel(ws, transport, request.app[WRITE_BATCH_KEY])
    request.app[SOCKETS_KEY].add(channel)
    log.info("peer %s in room %s opened a WebSocket", peer_id, room_id)
    if joined is not None:
        channel.send(connected_frame(joined))  # the first frame out (outbox frames queue behind it)
    await session(rtc, ws, channel, room_id, peer_id, joined=joined is not None)
    return ws


async def session(
    rtc: RtcServer, ws: FrameWebSocketResponse, channel: WebSocketChannel, room_id: str, peer_id: str, *, joined: bool
) -> None:
    """An open socket's life through aiohttp: attached to its peer, its frames served, and
    everything let go when it ends, however it ends. (The lean socket does the same with
    callbacks instead of a task: ``web._lean``.)"""
    try:
        if rtc.draining:  # the drain began during the handshake: this one is asked to reconnect too
            channel.begin_close(CloseCode.SERVICE_RESTART, "server restarting: connect again")
        else:  # (not attached then: its outbox stays in the backend for the next socket)
            await rtc.attach_channel(room_id, peer_id, channel)
            frames = PeerFrames(rtc, ws, channel, room_id, peer_id, joined=joined)
            await _serve_socket(ws, channel, frames)
    finally:
        rtc.detach_channel(room_id, peer_id, channel)
        channel.flush()
        await ws.finish_frames()
        if channel.closing is not None:
            await asyncio.gather(channel.closing, return_exceptions=True)
        if not ws.closed:
            await ws.close()
        log.info("peer %s in room %s closed its WebSocket (code %s)", peer_id, room_id, ws.close_code)


async def _join(request: RequestLike, rtc: RtcServer) -> Connect:
    """``GET /rtc/ws?roomId=&peerId=&metadata=&authToken=``: ``POST /rtc/connect``'s join, with the
    same rules (a JWT in ``authToken`` or the Authorization header under ``--auth-secret``; the
    peer's earlier token in ``token``, the header or its cookie to replace it), before the upgrade:
    a refusal is the same HTTP error ``connect`` gives."""
    query = request.query
    room_id = validate_id(query.get("roomId"), "roomId")
    peer_id = validate_id(query["peerId"], "peerId") if "peerId" in query else None
    metadata: Any = None
    if "metadata" in query:  # JSON, URL-encoded; connect_peer checks it is an object and its size
        metadata, _fast = _json.parse(query["metadata"], max_depth=rtc.config.max_json_depth)
    proof = token_from_request(request, room_id, peer_id) if peer_id else token_from_request(request)
    jwt_token = query.get("authToken")
    if rtc.config.auth_secret and jwt_token is None and proof and looks_like_jwt(proof):
        jwt_token, proof = proof, None
    return await rtc.connect_peer(room_id, peer_id, metadata, proof=proof, auth_token=jwt_token, address=request.remote)


async def _serve_socket(ws: FrameWebSocketResponse, channel: WebSocketChannel, frames: PeerFrames) -> None:
    # Text frames are handled as they are parsed (_aiohttp_compat); this loop sees the others, and the
    # text frames that arrived while one was waiting on Redis.
    ws.handle_frames(frames.handle)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            if not await ws.run_queued(frames.handle, msg.data):
                break
        else:
            if msg.type is WSMsgType.BINARY:
                channel.flush()
                await ws.close(code=CloseCode.UNSUPPORTED_DATA, message=BINARY_REFUSED)
            break


class PeerFrames:
    """What one peer's text frames do: signal, heartbeat, disconnect (docs/protocol.md)."""

    __slots__ = ("channel", "in_flight", "last_touch", "max_depth", "peer_id", "room_id", "rtc", "ws")

    def __init__(
        self, rtc: RtcServer, ws: SocketLike, channel: WebSocketChannel, room_id: str, peer_id: str, *, joined: bool
    ) -> None:
        self.rtc = rtc
        self.ws = ws
        self.channel = channel
        self.room_id = room_id
        self.peer_id = peer_id
        self.max_depth = rtc.config.max_json_depth
        # A join in the upgrade was the peer's latest sign of life: its first frame need not touch it
        # again. A socket opened with a token may come long after the peer's last touch.
        self.last_touch = time.monotonic() if joined else 0.0
        # Reading ahead: a relay through Redis is on its way, in order, before its report is in;
        # the next frame is read meanwhile and the ack (or error) follows when the report comes.
        self.in_flight: asyncio.Future[RelayResult] | None = None

    def handle(self, data: str | bytes) -> bool | Coroutine[Any, Any, bool]:
        """Handle one frame; False when the socket is closing and reading should stop.

        Most frames are handled here and now, without a coroutine (a frame handler of
        ``_aiohttp_compat``: about a microsecond per frame less, BENCHMARKS.md). A frame that has
        to wait (the once-a-second touch of the peer, a relay through Redis, a disconnect) gets a
        coroutine that carries on, which the socket runs before it handles the next frame.

        ``data`` is the frame's text, or its bytes as the lean socket reads them: msgspec checks
        their UTF-8 as it parses them (and the standard library's parse, strictly, what msgspec
        refuses), so the reader's decode of every frame is spared; a frame refused as JSON whose
        bytes are not UTF-8 closes the socket with 1007 instead (RFC 6455 8.1), as aiohttp's reader
        does."""
        channel = self.channel
        if channel.closing is not None or self.ws.closed:
            return False
        now = time.monotonic()
        channel.batch.received(now)
        if now - self.last_touch >= 1.0:  # any frame is liveness; touch at most once a second
            self.last_touch = now
            return self._touched_then(data)
        try:
            return self._frame(data)
        except Exception as err:
            return self._refused(err, data)

    async def _touched_then(self, data: str | bytes) -> bool:
        try:
            await self.rtc.heartbeat(self.room_id, self.peer_id)
            return await run_handler(self._frame, data)
        except Exception as err:
            return self._refused(err, data)

    def _frame(self, data: str | bytes) -> bool | Coroutine[Any, Any, bool]:
        frame, fast = _json.parse(data, max_depth=self.max_depth)
        if type(frame) is not dict:
            raise InvalidRequest("The body must be a JSON object.")
        kind = frame.get("type")
        if kind == "signal":
            if "signal" not in frame:
                raise InvalidRequest("A signal frame needs a signal: {type, payload, to?}.")
            signal = signal_of(frame["signal"], fast, self.max_depth)
            outcome = self.rtc.relay_now(self.room_id, self.peer_id, signal)
            if isinstance(outcome, RelayResult):
                if "id" in frame:
                    self.channel.send(dumps({"type": "ack", "id": frame["id"], **outcome.to_wire()}))
                return True
            return self._guarded(self._relaying(outcome, frame.get("id", _NO_ID)), data)
        if kind == "heartbeat":
            if "id" in frame:
                self.channel.send(dumps({"type": "ack", "id": frame["id"]}))
            return True
        if kind == "disconnect":
            return self._guarded(self._disconnect(), data)
        raise InvalidRequest("Unknown frame type: expected signal, heartbeat or disconnect.")

    async def _relaying(
        self, submitted: Coroutine[Any, Any, RelayResult | asyncio.Future[RelayResult]], frame_id: Any
    ) -> bool:
        """A relay through the backend's coroutine: the ack (or error) when it is done, or, when it
        is on its way to Redis, when its report comes (the next frames are read meanwhile)."""
        outcome = await submitted
        if isinstance(outcome, RelayResult):
            if frame_id is not _NO_ID:
                self.channel.send(dumps({"type": "ack", "id": frame_id, **outcome.to_wire()}))
        else:
            outcome.add_done_callback(functools.partial(_answer_relay, self.channel, frame_id))
            self.in_flight = outcome
        return True

    async def _disconnect(self) -> bool:
        if self.in_flight is not None:  # the peer's last signals go out before its departure
            await asyncio.wait([self.in_flight])
        await self.rtc.disconnect_peer(self.room_id, self.peer_id, LeaveReason.LEFT)
        self.channel.begin_close(CloseCode.LEFT, "")
        return False

    async def _guarded(self, pending: Coroutine[Any, Any, bool], data: str | bytes) -> bool:
        try:
            return await pending
        except Exception as err:
            return self._refused(err, data)

    def _refused(self, err: Exception, data: str | bytes) -> bool:
        """Answer a frame that raised ``err``; False when the socket closes for it."""
        channel = self.channel
        if isinstance(err, InvalidJson) and not _is_text(data):  # not UTF-8: not a text frame at all
            channel.begin_close(CloseCode.INVALID_TEXT, "")
            return False
        if isinstance(err, RateLimited):
            channel.batch.counters.error(err.code, "ws")
            channel.send(dumps(error_message(err.code, err.message)))
            channel.begin_close(CloseCode.POLICY_VIOLATION, "rate limited")
            return False
        if isinstance(err, RtcError):
            channel.send(_error_frame(channel, err, _frame_id(data)))
            return True
        log.error("unhandled error on a frame from peer %s in room %s", self.peer_id, self.room_id, exc_info=err)
        channel.send(_INTERNAL_ERROR_FRAME)
        channel.begin_close(CloseCode.INTERNAL_ERROR, "internal error")
        return False


_NO_ID = object()  # a frame without "id" (distinct from "id": null)


_INTERNAL_ERROR_FRAME = dumps(error_message("internal_error", "Internal server error."))


def _answer_relay(channel: WebSocketChannel, frame_id: Any, outcome: asyncio.Future[RelayResult]) -> None:
    """The ack (when the frame asked for one) or the error of a relay that finished later."""
    if outcome.cancelled():
        return
    err = outcome.exception()
    if err is None:
        if frame_id is not _NO_ID:
            channel.send(dumps({"type": "ack", "id": frame_id, **outcome.result().to_wire()}))
    elif isinstance(err, RtcError):
        channel.send(_error_frame(channel, err, frame_id))
    else:
        log.error("relay failed", exc_info=err)
        channel.send(_INTERNAL_ERROR_FRAME)


def _error_frame(channel: WebSocketChannel, err: RtcError, frame_id: Any) -> str:
    """An ``error`` frame, carrying the refused frame's ``id`` when it had a usable one."""
    channel.batch.counters.error(err.code, "ws")
    error = error_message(err.code, err.message, **err.details)
    if isinstance(frame_id, (str, int)):
        error["id"] = frame_id
    return dumps(error)


def _is_text(data: str | bytes) -> bool:
    """Whether a frame's data is text: a str, or bytes that are UTF-8."""
    if isinstance(data, str):
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _frame_id(data: str | bytes) -> Any:
    """The ``id`` of a refused frame, to put on its error, read leniently: a frame refused for a
    NaN or a lone surrogate in its payload still gets its id back."""
    try:  # (bytes: UTF-8, checked by the parse that refused the frame)
        frame = json.loads(data.decode() if isinstance(data, bytes) else data)
    except (ValueError, RecursionError):
        return None
    return frame.get("id") if isinstance(frame, dict) else None
