"""aiohttp transport: the routes of docs/protocol.md over the facade.

``create_app(rtc=None, config=None)`` returns an :class:`aiohttp.web.Application`; mount it as a
sub-app or run it (``fantasize-rtc serve`` does). Errors become ``{"error": {code, message}}``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http import HttpProcessingError

from . import __version__, _json
from ._aiohttp_compat import FrameWebSocketResponse
from ._resources import static_dir
from .auth import (
    COOKIE_MAX_AGE,
    COOKIE_PATH,
    connect_cookie_name,
    connect_cookie_value,
    looks_like_jwt,
    stale_cookies,
    token_from_cookies,
)
from .config import RtcConfig
from .errors import (
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    RtcError,
    Unauthorized,
    UnsupportedMediaType,
)
from .protocol import (
    Signal,
    dumps,
    error_message,
    require_object,
    validate_id,
    validate_signal,
)
from .server import RelayResult, RtcServer, create_rtc_server

__all__ = [
    "ADMIN_KEY",
    "RTC_KEY",
    "WebSocketChannel",
    "create_app",
    "is_admin",
    "json_response",
    "read_body",
    "read_json",
    "refuse_admin_key_in_url",
    "require_admin_or_token",
    "token_from_request",
]

log = logging.getLogger(__name__)

RTC_KEY = web.AppKey("rtc", RtcServer)
SOCKETS_KEY: web.AppKey[weakref.WeakSet[WebSocketChannel]] = web.AppKey("sockets")
STARTED_KEY = web.AppKey("started_at", float)
WRITE_BATCH_KEY: web.AppKey[WriteBatch] = web.AppKey("write_batch")
ADMIN_KEY = web.AppKey("admin_key", str)

_HTTP_CODES = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
}
_CLOSE_TIMEOUT = 2.0  # seconds a client gets to answer our close frame
# Missing content type (curl -d sends form type; fetch with a string sends text/plain) is refused
# on purpose: a cross-site form can send text/plain without a CORS preflight.
_JSON_TYPES = ("application/json",)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(err: RtcError) -> web.Response:
    headers = {}
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    response = json_response(err.to_dict(), status=err.status, headers=headers)
    if isinstance(err, _StaleCookie):
        response.del_cookie(err.cookie, path=COOKIE_PATH)
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    drain = True  # the rest of an unread body is worth reading (keeps the connection)
    try:
        response = await handler(request)
    except RtcError as err:
        response = error_response(err)
        drain = not isinstance(err, (RequestTimeout, _UndecodableBody))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_CODES.get(exc.status, InvalidRequest)
        response = json_response(cls(exc.reason + ".").to_dict(), status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = json_response({"error": {"code": "internal_error", "message": "Internal server error."}}, status=500)
        drain = False
    if request.body_exists and not request.content.is_eof():
        await _finish_unread_body(request, response, drain)
    return response


#: Seconds the rest of a body the handler did not read may take to arrive (aiohttp's own
#: "lingering" read allows 10 s, which a trickling client fills).
_UNREAD_BODY_S = 1.0


async def _finish_unread_body(request: web.Request, response: web.StreamResponse, drain: bool) -> None:
    """Read the rest of a body the handler did not read (it answered before reading, or could
    not read it), as aiohttp would, but within a second and without logging an undecodable body
    as an unhandled ERROR; a body that cannot be read closes the connection after the answer."""
    if not isinstance(response, web.Response) or response.prepared:
        return  # a WebSocket or a stream: it owns the connection
    if drain:
        try:
            await asyncio.wait_for(request.read(), _UNREAD_BODY_S)
            return
        except Exception:  # too large, undecodable, too slow: not worth reading
            log.debug("unread body of %s %s not drained; closing after the answer", request.method, request.path)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the transport sends what it holds, then closes


def cors_middleware(origins: tuple[str, ...]) -> Any:
    allow_all = "*" in origins
    allowed = frozenset(origins)

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        ok = origin is not None and (allow_all or origin in allowed)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not ok:
                return json_response(Forbidden("Origin not allowed.").to_dict(), status=403)
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if ok and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After"
            response.headers["Vary"] = "Origin"
        return response

    return middleware


# -- request helpers -----------------------------------------------------------------------------


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON, 413 when too large, 400 when malformed."""
    return (await _read_json_fast(request))[0]


async def read_body(request: web.Request) -> bytes:
    """The request body: 413 over the size limit, 408 when it trickles in slower than the body
    timeout (the connection is then closed), 400 when its Content-Encoding cannot be decoded."""
    if request.content.is_eof():  # all there already (the common case): nothing to wait for
        try:
            return await request.read()
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            raise _undecodable(request) from exc
    timeout = request.app[RTC_KEY].config.body_timeout_ms / 1000
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        log.warning("request body from %s on %s did not arrive within %.0f s", request.remote, request.path, timeout)
        raise RequestTimeout(f"The request body did not arrive within {timeout:g} s.") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. gzip on a body that is not gzip
        raise _undecodable(request) from exc


def _undecodable(request: web.Request) -> _UndecodableBody:
    encoding = request.headers.get("Content-Encoding", "")[:32]
    return _UndecodableBody(f"The body could not be decoded (Content-Encoding: {encoding!r}).")


class _UndecodableBody(InvalidRequest):
    """A body that cannot be read to its end: the answer closes the connection."""


async def _read_json_fast(request: web.Request) -> tuple[dict[str, Any], bool]:
    ctype = request.content_type
    if request.body_exists and ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
    data = await read_body(request)
    if not data:
        raise InvalidRequest("The body must be a JSON object.")
    body, fast = _json.parse(data, max_depth=request.app[RTC_KEY].config.max_json_depth)
    return require_object(body), fast


def _signal_of(value: Any, fast: bool, max_depth: int) -> Signal:
    """Validate a client's signal; its payload is kept as JSON text, written back by msgspec when
    msgspec read it, so the relay does not encode an SDP (most of a message) on the way out."""
    payload_json = _json.encode(value["payload"], fast) if type(value) is dict and "payload" in value else None
    return validate_signal(value, max_depth=max_depth, payload_json=payload_json)


def token_from_request(request: web.Request, room_id: str | None = None, peer_id: str | None = None) -> str | None:
    """Bearer header, then ``?token=``, then the connect cookie for (room, peer)."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    token = request.query.get("token")
    if token:
        return token
    if room_id and peer_id:
        return token_from_cookies(request.cookies, room_id, peer_id)
    return None


def _secure(request: web.Request) -> bool:
    """HTTPS, here or at a proxy in front (``X-Forwarded-Proto``). Trusting that header only ever
    makes the cookie stricter: a Secure cookie is not sent back over plain HTTP."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _optional_id(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    return None if value is None else validate_id(value, field)


async def _peer_from(request: web.Request, body: dict[str, Any], peer_field: str) -> tuple[str, str]:
    """Authenticate the caller; the ids in the body, when present, must be the token's."""
    rtc = request.app[RTC_KEY]
    room_id = _optional_id(body, "roomId")
    peer_id = _optional_id(body, peer_field)
    token = token_from_request(request, room_id, peer_id)
    try:
        room, peer = await rtc.authenticate(token)
    except Unauthorized as err:
        if room_id and token is not None and token == token_from_cookies(request.cookies, room_id, peer_id or ""):
            raise _StaleCookie(err.message, connect_cookie_name(room_id)) from None  # its peer left or was reaped
        raise
    if (room_id is not None and room_id != room) or (peer_id is not None and peer_id != peer):
        raise Forbidden(f"This token belongs to peer {peer!r} in room {room!r}.")  # as rtc.authorize
    return room, peer


class _StaleCookie(Unauthorized):
    """A connect cookie whose peer is gone: the 401 also clears it."""

    def __init__(self, message: str, cookie: str) -> None:
        super().__init__(message)
        self.cookie = cookie


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


def _is_key(request: web.Request, given: str | None) -> bool:
    key = request.app.get(ADMIN_KEY)
    return bool(key and given and hmac.compare_digest(key.encode(), given.encode()))


def is_admin(request: web.Request) -> bool:
    """The caller sent the admin key, in the Authorization header (never taken from the URL:
    URLs end up in proxy and access logs, and the key does not expire)."""
    return _is_key(request, _bearer(request))


def refuse_admin_key_in_url(request: web.Request) -> None:
    """401 with a clear sentence when the admin key came as ``?token=``."""
    if _is_key(request, request.query.get("token")):
        raise Unauthorized("Send the admin key in the Authorization header, not in the URL (URLs end up in logs).")


async def require_admin_or_token(request: web.Request) -> tuple[str, str] | None:
    """None for the admin key, else the (room, peer) of the caller's peer token."""
    if is_admin(request):
        return None
    refuse_admin_key_in_url(request)
    return await request.app[RTC_KEY].authenticate(token_from_request(request))


# -- routes --------------------------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.post("/rtc/connect")
async def connect(request: web.Request) -> web.Response:
    rtc = request.app[RTC_KEY]
    body = await read_json(request)
    room_id = validate_id(body.get("roomId"), "roomId")
    peer_id = _optional_id(body, "peerId")
    bearer = token_from_request(request, room_id, peer_id) if peer_id else token_from_request(request)
    jwt_token = body.get("authToken") if isinstance(body.get("authToken"), str) else None
    if rtc.config.auth_secret and jwt_token is None and bearer and looks_like_jwt(bearer):
        jwt_token, bearer = bearer, None
    result = await rtc.connect_peer(
        room_id, peer_id, body.get("metadata"), proof=bearer, auth_token=jwt_token, address=request.remote
    )
    response = json_response(result.to_wire())
    name = connect_cookie_name(result.room_id)
    response.set_cookie(
        name,
        connect_cookie_value(result.peer_id, result.token),
        path=COOKIE_PATH,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    for stale in stale_cookies(request.cookies, keep=name):
        response.del_cookie(stale, path=COOKIE_PATH)
    return response


@routes.post("/rtc/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    room_id, peer_id = await _peer_from(request, await read_json(request), "peerId")
    last_seen = await request.app[RTC_KEY].heartbeat(room_id, peer_id)
    return json_response({"lastSeen": last_seen})


@routes.post("/rtc/signal")
async def signal(request: web.Request) -> web.Response:
    body, fast = await _read_json_fast(request)
    room_id, peer_id = await _peer_from(request, body, "fromPeerId")
    if "signal" not in body:
        raise InvalidRequest("signal is required: {type, payload, to?}.")
    rtc = request.app[RTC_KEY]
    result = await rtc.relay(room_id, peer_id, _signal_of(body["signal"], fast, rtc.config.max_json_depth))
    return json_response(result.to_wire())


@routes.post("/rtc/disconnect")
async def disconnect(request: web.Request) -> web.Response:
    room_id, peer_id = await _peer_from(request, await read_json(request), "peerId")
    await request.app[RTC_KEY].disconnect_peer(room_id, peer_id, "left")
    response = json_response({"disconnected": True})
    if token_from_cookies(request.cookies, room_id, peer_id) is not None:
        response.del_cookie(connect_cookie_name(room_id), path=COOKIE_PATH)
    return response


@routes.get("/rtc/rooms/{roomId}")
async def room_snapshot(request: web.Request) -> web.Response:
    room_id = validate_id(request.match_info["roomId"], "roomId")
    caller = await require_admin_or_token(request)
    if caller is not None and caller[0] != room_id:
        raise Forbidden("Only members of a room (or the admin key) may see its snapshot.")
    snapshot = await request.app[RTC_KEY].get_room_snapshot(room_id)
    return json_response(snapshot.to_wire())


@routes.get("/rtc/poll")
async def poll(request: web.Request) -> web.Response:
    rtc = request.app[RTC_KEY]
    room_id, peer_id = await rtc.authenticate(token_from_request(request))
    try:
        wait_ms = int(request.query.get("waitMs", "25000"))
    except ValueError as exc:
        raise InvalidRequest("waitMs must be an integer number of milliseconds.") from exc
    if not 0 <= wait_ms <= 120_000:
        raise InvalidRequest("waitMs must be from 0 to 120000.")
    texts = await rtc.poll(room_id, peer_id, wait_ms, alive=functools.partial(_can_answer, request))
    response = web.Response(body=_messages_body(texts, room_id, peer_id), content_type="application/json")
    if not texts:
        return response
    # Delivered means written to a live connection: a poll whose client left while its answer was
    # on the way gives the messages back (they go to the peer's next poll or socket).
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        await rtc.undelivered(room_id, peer_id, texts)
    return response


def _can_answer(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _messages_body(texts: list[str], room_id: str, peer_id: str) -> bytes:
    parts: list[bytes] = []
    for text in texts:
        try:
            parts.append(text.encode())
        except UnicodeEncodeError:  # never expected (input is checked at the edge); lose only this one
            log.warning("dropped a message to %s in room %s that is not UTF-8 text", peer_id, room_id)
    return b'{"messages":[' + b",".join(parts) + b"]}"


#: A peer whose socket holds this much unsent data (it stopped reading) is closed with 4002; what
#: could not be handed over waits in its outbox for its next connection.
SEND_BUFFER_LIMIT = 4 * 1024 * 1024
_PACK_LEN2 = struct.Struct("!BBH").pack
_PACK_LEN3 = struct.Struct("!BBQ").pack


class WriteBatch:
    """Flushes, once per pass of the event loop, every socket that queued frames in that pass:
    one callback for all of them instead of one per socket and message."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[WebSocketChannel] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    def add(self, channel: WebSocketChannel) -> None:
        self._dirty.append(channel)
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for channel in dirty:
            channel.flush()


class WebSocketChannel:
    """A peer's WebSocket as a hub channel.

    :meth:`send` does not wait: it frames the text (a server's frames are unmasked, RFC 6455
    section 5.2) and queues it, and everything queued for the socket during one pass of the event
    loop goes out in one write. A relay that reads 40 signals from one socket in one pass then
    writes them to the other with one system call instead of 40 (BENCHMARKS.md). Every frame to
    the peer goes through here, so they keep their order; :meth:`flush` runs before a close.
    """

    kind = "ws"
    __slots__ = ("__weakref__", "_batch", "_queued", "_size", "_transport", "closing", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, batch: WriteBatch) -> None:
        self.ws = ws
        self.closing: asyncio.Task[bool] | None = None
        self._transport = transport
        self._batch = batch
        self._queued: list[bytes] = []
        self._size = 0

    def send(self, text: str) -> bool:
        if self.closing is not None or self.ws.closed or self._transport.is_closing():
            return False
        data = text.encode()
        n = len(data)
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = _PACK_LEN2(0x81, 126, n)
        else:
            header = _PACK_LEN3(0x81, 127, n)
        size = self._size + n
        if size + self._transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            log.warning("closing a WebSocket that stopped reading (%d bytes unsent)", size)
            self.begin_close(4002, "too slow: messages were not read")
            return False
        queued = self._queued
        if not queued:
            self._batch.add(self)
        queued.append(header + data)
        self._size = size
        return True

    def flush(self) -> None:
        """Write what is queued now."""
        queued = self._queued
        if not queued:
            return
        self._queued = []
        self._size = 0
        # A close frame went out meanwhile (the client closed): nothing may follow it.
        if not self.ws.closed and not self._transport.is_closing():
            self._transport.write(queued[0] if len(queued) == 1 else b"".join(queued))

    async def close(self, code: int, reason: str) -> None:
        self.begin_close(code, reason)

    def begin_close(self, code: int, reason: str) -> None:
        # The close handshake waits for the client's reply; whoever closes (the reaper, another
        # peer's connect) must not wait on a slow or hostile client, so it runs as a task that the
        # socket's own handler awaits before it returns.
        if self.closing is None and not self.ws.closed:
            self.flush()
            self.closing = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()[:120]))


def _check_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    """With ``--cors-origin`` set, a browser's WebSocket must come from the page's own origin or
    an allowed one (browsers send Origin on every WebSocket, and CORS does not cover them)."""
    origin = request.headers.get("Origin")
    if not allowed or origin is None or "*" in allowed or origin in allowed:
        return
    if origin.partition("://")[2] == request.host:  # same origin (scheme checked by the browser)
        return
    raise Forbidden("This origin may not open the WebSocket (see --cors-origin).")


@routes.get("/rtc/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    rtc = request.app[RTC_KEY]
    _check_origin(request, rtc.config.cors_origins)
    room_id, peer_id = await rtc.authenticate(token_from_request(request))
    # No permessage-deflate, although every browser offers it: with it, each peer holds a zlib
    # context (RSS per idle peer 18 KB -> 99 KB, BENCHMARKS.md) and each relayed offer costs
    # ~60 us of compression, twice the rest of the relay. Signals are small; PeerJS (ws) agrees.
    ws = FrameWebSocketResponse(max_msg_size=rtc.config.max_frame_bytes, timeout=_CLOSE_TIMEOUT, compress=False)
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the client gave up during the handshake: nothing to serve
        log.info("peer %s in room %s left during the WebSocket handshake", peer_id, room_id)
        # not the half-prepared socket (aiohttp would try to close it); this answer is never sent
        return web.Response(status=400, text="client left during the handshake")
    transport = request.transport
    if transport is None:  # gone right after the handshake
        return ws
    channel = WebSocketChannel(ws, transport, request.app[WRITE_BATCH_KEY])  # type: ignore[arg-type]
    request.app[SOCKETS_KEY].add(channel)
    log.info("peer %s in room %s opened a WebSocket", peer_id, room_id)
    try:
        await rtc.attach_channel(room_id, peer_id, channel)
        await _serve_socket(rtc, ws, channel, room_id, peer_id)
    finally:
        rtc.detach_channel(room_id, peer_id, channel)
        channel.flush()
        await ws.finish_frames()
        if channel.closing is not None:
            await asyncio.gather(channel.closing, return_exceptions=True)
        if not ws.closed:
            await ws.close()
        log.info("peer %s in room %s closed its WebSocket (code %s)", peer_id, room_id, ws.close_code)
    return ws


async def _serve_socket(
    rtc: RtcServer, ws: FrameWebSocketResponse, channel: WebSocketChannel, room_id: str, peer_id: str
) -> None:
    frames = _PeerFrames(rtc, ws, channel, room_id, peer_id)
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
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not supported")
            break


class _PeerFrames:
    """What one peer's text frames do: signal, heartbeat, disconnect (docs/protocol.md)."""

    __slots__ = ("channel", "in_flight", "last_touch", "max_depth", "peer_id", "room_id", "rtc", "ws")

    def __init__(
        self, rtc: RtcServer, ws: web.WebSocketResponse, channel: WebSocketChannel, room_id: str, peer_id: str
    ) -> None:
        self.rtc = rtc
        self.ws = ws
        self.channel = channel
        self.room_id = room_id
        self.peer_id = peer_id
        self.max_depth = rtc.config.max_json_depth
        self.last_touch = 0.0
        # Reading ahead: a relay through Redis is on its way, in order, before its report is in;
        # the next frame is read meanwhile and the ack (or error) follows when the report comes.
        self.in_flight: asyncio.Future[RelayResult] | None = None

    async def handle(self, data: str) -> bool:
        """Handle one frame; False when the socket is closing and reading should stop."""
        channel = self.channel
        if channel.closing is not None or self.ws.closed:
            return False
        rtc = self.rtc
        now = time.monotonic()
        try:
            if now - self.last_touch >= 1.0:  # any frame is liveness; touch at most once a second
                self.last_touch = now
                await rtc.heartbeat(self.room_id, self.peer_id)
            frame, fast = _json.parse(data, max_depth=self.max_depth)
            if type(frame) is not dict:
                raise InvalidRequest("The body must be a JSON object.")
            kind = frame.get("type")
            if kind == "signal":
                if "signal" not in frame:
                    raise InvalidRequest("A signal frame needs a signal: {type, payload, to?}.")
                signal = _signal_of(frame["signal"], fast, self.max_depth)
                outcome = await rtc.submit_relay(self.room_id, self.peer_id, signal)
                if isinstance(outcome, RelayResult):
                    if "id" in frame:
                        channel.send(dumps({"type": "ack", "id": frame["id"], **outcome.to_wire()}))
                else:
                    frame_id = frame.get("id", _NO_ID)
                    outcome.add_done_callback(functools.partial(_answer_relay, channel, frame_id))
                    self.in_flight = outcome
            elif kind == "heartbeat":
                if "id" in frame:
                    channel.send(dumps({"type": "ack", "id": frame["id"]}))
            elif kind == "disconnect":
                if self.in_flight is not None:  # the peer's last signals go out before its departure
                    await asyncio.wait([self.in_flight])
                await rtc.disconnect_peer(self.room_id, self.peer_id, "left")
                channel.begin_close(WSCloseCode.OK, "")
                return False
            else:
                raise InvalidRequest("Unknown frame type: expected signal, heartbeat or disconnect.")
        except RateLimited as err:
            channel.send(dumps(error_message(err.code, err.message)))
            channel.begin_close(WSCloseCode.POLICY_VIOLATION, "rate limited")
            return False
        except RtcError as err:
            channel.send(_error_frame(err, _frame_id(data)))
        except Exception:
            log.exception("unhandled error on a frame from peer %s in room %s", self.peer_id, self.room_id)
            channel.send(_INTERNAL_ERROR_FRAME)
            channel.begin_close(WSCloseCode.INTERNAL_ERROR, "internal error")
            return False
        return True


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
        channel.send(_error_frame(err, frame_id))
    else:
        log.error("relay failed", exc_info=err)
        channel.send(_INTERNAL_ERROR_FRAME)


def _error_frame(err: RtcError, frame_id: Any) -> str:
    """An ``error`` frame, carrying the refused frame's ``id`` when it had a usable one."""
    error = error_message(err.code, err.message, **err.details)
    if isinstance(frame_id, (str, int)):
        error["id"] = frame_id
    return dumps(error)


def _frame_id(data: str) -> Any:
    """The ``id`` of a refused frame, to put on its error, read leniently: a frame refused for a
    NaN or a lone surrogate in its payload still gets its id back."""
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return frame.get("id") if isinstance(frame, dict) else None


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    rtc = request.app[RTC_KEY]
    health = rtc.backend.health()
    return json_response(
        {
            "status": "ok" if health.get("ok", True) else "degraded",
            "version": __version__,
            "uptimeMs": int((time.monotonic() - request.app[STARTED_KEY]) * 1000),
            **(await rtc.stats()),
            "backend": health,
        },
        status=200 if health.get("ok", True) else 503,
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})


# -- the app -------------------------------------------------------------------------------------


def create_app(
    rtc: RtcServer | None = None, config: RtcConfig | None = None, *, media: bool = True, static: bool = True
) -> web.Application:
    """The aiohttp application: signaling routes, WebSocket, long-poll, health, the demo page,
    and (``media=True``) the server's own WebRTC peers.

    Pass ``rtc`` to share one facade with your own code; otherwise one is made from ``config``.
    The app starts the facade on startup and, when it made it, closes it on cleanup.
    """
    owns_rtc = rtc is None
    if rtc is None:
        rtc = create_rtc_server(config)
    config = rtc.config
    middlewares: list[Any] = [error_middleware]
    if config.cors_origins:
        middlewares.insert(0, cors_middleware(config.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[RTC_KEY] = rtc
    sockets: weakref.WeakSet[WebSocketChannel] = weakref.WeakSet()
    app[SOCKETS_KEY] = sockets
    app[WRITE_BATCH_KEY] = WriteBatch()
    app[STARTED_KEY] = time.monotonic()
    if config.admin_key:
        app[ADMIN_KEY] = config.admin_key
    app.add_routes(routes)

    async def rtc_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await rtc.start()
        yield
        if owns_rtc:
            await rtc.close()

    async def close_sockets(app: web.Application) -> None:
        channels = app[SOCKETS_KEY]
        for channel in list(channels):
            channel.flush()
            await channel.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    app.cleanup_ctx.append(rtc_lifecycle)
    app.on_shutdown.append(close_sockets)
    if media:
        _setup_media(app)
    if static:
        app.router.add_get("/", index)
        app.router.add_static("/static/", static_dir(), append_version=False)
    return app


def _setup_media(app: web.Application) -> None:
    # The media layer sits below this one (it needs aiortc); it plugs its routes in here, lazily,
    # so signaling-only users never import aiortc.
    try:
        from .media import setup_media  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.media":
            raise
        return
    setup_media(app)
