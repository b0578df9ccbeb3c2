"""An async Python client for a fantasize-rtc server (the counterpart of ``static/rtc-client.js``).

::

    async with RtcClient("http://127.0.0.1:8080") as client:
        await client.connect("demo-room", "alice")
        await client.signal({"type": "hello", "payload": {"text": "hi"}}, to="bob")
        async for message in client.messages():
            print(message["type"], message)

Messages arrive over a WebSocket (``GET /rtc/ws``); when the WebSocket cannot be opened (a
proxy that refuses upgrades, say) the client falls back to long-polling (``GET /rtc/poll``).
A dropped connection is reopened with exponential backoff. Sends go over HTTP, so every send
gets its answer or a typed error. Errors from the server raise the class of
:mod:`fantasize_rtc.errors` that has the server's ``code`` (``RoomFull``, ``Unauthorized`` ...);
a code this client does not know raises :class:`ServerError`.

The seed library's call style works too: ``client.connect('demo-room', 'alice')``,
``client.signal('demo-room', 'alice', {...})``, ``client.heartbeat('demo-room', 'alice')``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from ssl import SSLContext
from typing import Any, Literal, overload

import aiohttp

from . import errors
from .errors import RtcError, Unauthorized
from .protocol import CloseCode

__all__ = ["ConnectionLost", "RtcClient", "ServerError", "error_from_response", "split_candidates"]

log = logging.getLogger(__name__)

Transport = Literal["auto", "ws", "poll"]

_CLOSE_DONE = object()  # sentinel put on the queue when the stream ends normally

#: Seconds (at most; half of it at least, with jitter) before the socket is opened again after the
#: server asked for it (close code 1012, a restart): soon, but its peers not all at once.
RESTART_RECONNECT_S = 0.3


class ServerError(RtcError):
    """An error whose code this client does not know (a newer server, or a proxy's error page)."""

    def __init__(self, code: str, status: int, message: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        # ``code``/``status`` are class attributes on the known errors; here they vary per instance.
        vars(self)["code"] = code
        vars(self)["status"] = status


class ConnectionLost(RtcError):
    """The server ended this peer's message stream (reaped for silence, or the token stopped working)."""

    code = "connection_lost"
    status = 0
    default_message = "The server ended this peer's connection."


def _error_classes() -> dict[str, type[RtcError]]:
    found: dict[str, type[RtcError]] = {}
    stack: list[type[RtcError]] = [RtcError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found


_BY_CODE = {code: cls for code, cls in _error_classes().items() if cls.__module__ == errors.__name__}
_BY_STATUS: dict[int, type[RtcError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    408: errors.RequestTimeout,
    409: errors.Conflict,
    412: errors.PreconditionFailed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    422: errors.UnprocessableContent,
    429: errors.RateLimited,
    503: errors.CapacityExceeded,
}


def error_from_response(status: int, body: Any, retry_after: str | None = None) -> RtcError:
    """The typed exception for an error answer: by the body's ``error.code``, else by status."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    details = {k: v for k, v in error.items() if k not in ("code", "message")} if isinstance(error, dict) else {}
    message = message if isinstance(message, str) else f"HTTP {status}"
    if isinstance(code, str):
        cls = _BY_CODE.get(code)
        if cls is None:
            return ServerError(code, status, message, **details)
    else:
        cls = _BY_STATUS.get(status)
        if cls is None:
            return ServerError("http_error", status, message, **details)
    if issubclass(cls, errors.CapacityExceeded):
        return cls(message, retry_after=_int_or(retry_after, 5), **details)
    err = cls(message, **details)
    if retry_after is not None:
        err.retry_after = _int_or(retry_after, 1)  # type: ignore[attr-defined]
    return err


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Take the ``a=candidate`` lines out of an SDP, for trickling them as ``candidate`` signals.

    aiortc gathers every candidate before its description is ready; a client that wants to
    trickle (as browsers do) sends the SDP without them, then each payload
    ``{candidate, sdpMid, sdpMLineIndex}``, then ``None`` for end of candidates.
    """
    kept: list[str] = []
    found: list[tuple[int, str]] = []
    mids: dict[int, str] = {}
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mids[index] = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            found.append((index, line[len("a=") :]))
        elif line != "a=end-of-candidates":
            kept.append(line)
    candidates = [{"candidate": text, "sdpMid": mids.get(i), "sdpMLineIndex": i} for i, text in found]
    return "\r\n".join(kept) + "\r\n", candidates


class RtcClient:
    """One peer's connection to a fantasize-rtc server.

    ``base_url`` is where the routes are mounted (``http://host:8080``, or
    ``http://host/prefix`` for an app mounted under a prefix). ``transport`` picks how messages
    arrive: ``"auto"`` (WebSocket, long-poll fallback), ``"ws"`` or ``"poll"``.
    ``auto_heartbeat`` keeps the peer alive at the interval the server asks for.
    ``admin_key`` is sent as the bearer token on calls made before ``connect`` (operators only).
    ``send_over="ws"`` sends this peer's signals over its open WebSocket (each one acknowledged
    by the server, saving an HTTP round trip); with no open WebSocket they go over HTTP.

    An ``https://`` base URL makes the WebSocket ``wss://``. ``ssl`` is handed to aiohttp for
    every request and the WebSocket: True (default) verifies the server's certificate as aiohttp
    does (with a ``session`` given: as its connector says), an ``ssl.SSLContext`` verifies with
    it (e.g. one that loads a self-signed certificate with ``load_verify_locations``), False skips
    verification (a test server only: anyone in the path can then read and change the traffic).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        transport: Transport = "auto",
        auto_heartbeat: bool = True,
        admin_key: str | None = None,
        poll_wait_ms: int = 25_000,
        max_backoff: float = 10.0,
        queue_size: int = 256,
        timeout: float = 30.0,
        send_over: Literal["http", "ws"] = "http",
        ssl: SSLContext | bool = True,
    ) -> None:
        if transport not in ("auto", "ws", "poll"):
            raise ValueError("transport must be 'auto', 'ws' or 'poll'")
        if send_over not in ("http", "ws"):
            raise ValueError("send_over must be 'http' or 'ws'")
        self.send_over = send_over
        self.base_url = base_url.rstrip("/")
        self.ssl = ssl
        self.transport: Transport = transport
        self.auto_heartbeat = auto_heartbeat
        self.admin_key = admin_key
        self.poll_wait_ms = poll_wait_ms
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._queue_size = queue_size
        self._queue: asyncio.Queue[Any] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tokens: dict[tuple[str, str], str] = {}
        self._acks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._frame_ids = 0
        self._closing = False
        #: The server's ``Connect`` answer (camelCase, as on the wire); None before ``connect``.
        self.info: dict[str, Any] | None = None
        #: How messages arrive now: "ws", "poll" or None (not listening).
        self.channel: str | None = None
        #: Why the message stream ended, once it has: "left", "replaced", "timeout", "closed" ...
        self.closed_reason: str | None = None
        #: The close code of the last WebSocket the server closed (``protocol.CloseCode``), e.g.
        #: 1012 when the server restarted and asked the client to connect again.
        self.last_close_code: int | None = None
        #: How often the message stream was opened again after the server ended it.
        self.reconnects = 0

    # -- identity -------------------------------------------------------------------------------

    @property
    def room_id(self) -> str | None:
        return self.info["roomId"] if self.info else None

    @property
    def peer_id(self) -> str | None:
        return self.info["peerId"] if self.info else None

    @property
    def token(self) -> str | None:
        return self.info["token"] if self.info else None

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        """``iceServers`` from connect (``[{urls, username?, credential?}]``)."""
        return list(self.info["iceServers"]) if self.info else []

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> RtcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Auth is the bearer token, explicitly; the connect cookie is for browsers.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        """Stop listening and heartbeating and close the HTTP session (if this client made it).

        Does not tell the server the peer left: call :meth:`disconnect` for that. Safe twice.
        """
        await self._stop_background("closed")
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_background(self, reason: str) -> None:
        self._closing = True
        tasks = [t for t in (self._receiver, self._heartbeater) if t is not None]
        self._receiver = self._heartbeater = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self.channel = None
        if self.closed_reason is None:
            self.closed_reason = reason
        if self._queue is not None:
            self._put_nowait_end(_CLOSE_DONE)

    def _put_nowait_end(self, item: Any) -> None:
        # The end marker must get in even when the queue is full: make room by dropping the oldest.
        assert self._queue is not None
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(item)

    # -- HTTP -----------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of ``path``: ``wss://`` for an ``https://`` base URL, ``ws://`` for
        ``http://`` (as the browser client's ``_wsUrl``)."""
        url = self.url(path)
        scheme, sep, rest = url.partition("://")
        ws_scheme = {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme)
        return ws_scheme + sep + rest

    def _headers(self, token: str | None) -> dict[str, str]:
        # None: this client's token (or the admin key); "": no credentials at all.
        if token is None:
            token = self.token or self.admin_key
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON answer or raises the server's typed error."""
        async with self._http().request(
            method,
            self.url(path),
            json=json,
            params=self._with_room(params, json),
            headers=self._headers(token),
            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ssl=self.ssl,
        ) as response:
            return await self._decode(response)

    def _with_room(self, params: Mapping[str, str] | None, body: Any = None) -> dict[str, str]:
        """Every request names its room in ``?room=``: the server ignores it, a load balancer can
        route on it so a room's peers share a process (docs/scale-out.md, room affinity)."""
        out = dict(params or {})
        room = body.get("roomId") if isinstance(body, dict) else None
        if room is None and self.info is not None:
            room = self.info.get("roomId")
        if isinstance(room, str) and "room" not in out:
            out["room"] = room
        return out

    @staticmethod
    async def _decode(response: aiohttp.ClientResponse) -> Any:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        if response.status >= 400:
            raise error_from_response(response.status, body, response.headers.get("Retry-After"))
        return body

    # -- the seed's API -------------------------------------------------------------------------

    async def connect(
        self,
        room_id: str,
        peer_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        auth_token: str | None = None,
        listen: bool = True,
    ) -> dict[str, Any]:
        """Join ``room_id`` as ``peer_id`` (the server picks one when None); returns ``Connect``.

        ``auth_token`` is the connect JWT when the server requires one. With ``listen`` (default)
        the message stream opens now, so nothing sent to this peer waits; read it with
        :meth:`messages`. Connecting again as the same peer from this client replaces the old
        connection instead of failing with ``peer_id_taken``.
        """
        body: dict[str, Any] = {"roomId": room_id}
        if peer_id is not None:
            body["peerId"] = peer_id
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if auth_token is not None:
            body["authToken"] = auth_token
        proof = self._tokens.get((room_id, peer_id)) if peer_id is not None else None
        if self.info is not None:
            await self._stop_background("reconnected")
        joined = await self._join_over_websocket(body, proof) if listen and self.transport != "poll" else None
        info: dict[str, Any]
        if joined is not None:
            info, first_socket = joined
        else:
            info, first_socket = await self.request("POST", "/rtc/connect", json=body, token=proof or ""), None
        self.info = info
        self._tokens[(info["roomId"], info["peerId"])] = info["token"]
        self._closing = False
        self.closed_reason = None
        log.info("peer %s connected to room %s at %s", info["peerId"], info["roomId"], self.base_url)
        self._queue = None
        if listen:
            self._start_receiver(first_socket)
        if self.auto_heartbeat:
            self._heartbeater = asyncio.create_task(self._heartbeat_forever(), name="rtc-client-heartbeat")
        return info

    def _identity(self, args: tuple[Any, ...], name: str) -> tuple[str, str, str | None]:
        """(room, peer, token) for a call in either style: no ids (this client's peer) or the seed's."""
        if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            room_id, peer_id = args[0], args[1]
            return room_id, peer_id, self._tokens.get((room_id, peer_id))
        if self.info is None:
            raise RuntimeError(f"{name}() before connect(): connect first, or pass (room_id, peer_id)")
        return self.info["roomId"], self.info["peerId"], self.info["token"]

    @overload
    async def signal(self, signal: Mapping[str, Any], /, *, to: str | None = None) -> dict[str, Any]: ...
    @overload
    async def signal(
        self, room_id: str, from_peer_id: str, signal: Mapping[str, Any], /, *, to: str | None = None
    ) -> dict[str, Any]: ...

    async def signal(self, *args: Any, to: str | None = None) -> dict[str, Any]:
        """Relay ``{type, payload, to?}`` to ``to`` or to every other peer in the room.

        Returns ``{listenersNotified, delivered, queued}``. Seed style:
        ``signal(room_id, from_peer_id, signal)``.
        """
        if len(args) == 1:
            room_id, peer_id, token = self._identity((), "signal")
            raw = args[0]
        elif len(args) == 3:
            room_id, peer_id, token = self._identity(args, "signal")
            raw = args[2]
        else:
            raise TypeError("signal(signal, to=None) or signal(room_id, from_peer_id, signal)")
        if not isinstance(raw, Mapping):
            raise TypeError("signal must be a mapping {type, payload, to?}")
        sig = dict(raw)
        if to is not None:
            sig["to"] = to
        ws = self._ws
        if self.send_over == "ws" and ws is not None and not ws.closed and token == self.token:
            sent = await self._signal_over_ws(ws, sig)
            if sent is not None:
                return sent
        body = {"roomId": room_id, "fromPeerId": peer_id, "signal": sig}
        result: dict[str, Any] = await self.request("POST", "/rtc/signal", json=body, token=token or "")
        return result

    async def _signal_over_ws(self, ws: aiohttp.ClientWebSocketResponse, sig: dict[str, Any]) -> dict[str, Any] | None:
        """Send one signal frame with an id and wait for its ack; None if it could not be sent."""
        self._frame_ids += 1
        frame_id = self._frame_ids
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[frame_id] = future
        try:
            try:
                await ws.send_json({"type": "signal", "signal": sig, "id": frame_id})
            except (ConnectionError, RuntimeError):
                return None  # not sent: safe to send over HTTP instead
            # The receiver resolves it; it must keep reading, so keep the messages() queue moving.
            reply = await asyncio.wait_for(future, self.timeout)
        finally:
            self._acks.pop(frame_id, None)
        if reply.get("type") == "error":
            raise error_from_response(0, reply)
        return {k: v for k, v in reply.items() if k not in ("type", "id")}

    async def heartbeat(self, room_id: str | None = None, peer_id: str | None = None) -> int:
        """Tell the server this peer is alive; returns its ``lastSeen`` (ms)."""
        room_id, peer_id, token = self._identity((room_id, peer_id), "heartbeat")
        body = await self.request(
            "POST", "/rtc/heartbeat", json={"roomId": room_id, "peerId": peer_id}, token=token or ""
        )
        return int(body["lastSeen"])

    async def disconnect(self, room_id: str | None = None, peer_id: str | None = None) -> bool:
        """Leave the room (the others get ``peer:disconnected`` with reason ``left``)."""
        room_id, peer_id, token = self._identity((room_id, peer_id), "disconnect")
        mine = self.info is not None and (room_id, peer_id) == (self.info["roomId"], self.info["peerId"])
        if mine:
            await self._stop_background("left")
        try:
            body = await self.request(
                "POST", "/rtc/disconnect", json={"roomId": room_id, "peerId": peer_id}, token=token or ""
            )
        finally:
            self._tokens.pop((room_id, peer_id), None)
            if mine:
                self.info = None
        return bool(body.get("disconnected"))

    async def snapshot(self, room_id: str | None = None) -> dict[str, Any]:
        """``RoomSnapshot`` of this peer's room (or of ``room_id`` with the admin key)."""
        room_id = room_id or self.room_id
        if room_id is None:
            raise RuntimeError("snapshot() needs a room: connect first or pass room_id")
        result: dict[str, Any] = await self.request("GET", f"/rtc/rooms/{room_id}")
        return result

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/healthz", token="")
        return result

    # -- the server's own peers (media) ---------------------------------------------------------

    async def offer(self, sdp: str, mode: str = "echo", **extra: Any) -> dict[str, Any]:
        """``POST /rtc/offer``: hand an SDP offer to a server peer; returns ``{sdp, type, sessionId}``."""
        body = {"sdp": sdp, "type": "offer", "mode": mode, **extra}
        if self.room_id is not None and "roomId" not in body:
            body["roomId"] = self.room_id
        result: dict[str, Any] = await self.request("POST", "/rtc/offer", json=body)
        return result

    async def media_session(self, session_id: str) -> dict[str, Any]:
        """The report of a media session (state, timings, candidate pair, stats)."""
        result: dict[str, Any] = await self.request("GET", f"/rtc/sessions/{session_id}")
        return result

    async def close_media_session(self, session_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("DELETE", f"/rtc/sessions/{session_id}")
        return result

    async def recordings(self) -> Any:
        """``GET /rtc/recordings``: the recordings this caller may see."""
        return await self.request("GET", "/rtc/recordings")

    async def download_recording(self, recording_id: str, dest: str | Path) -> Path:
        """Save a recording to ``dest`` (a file, or a folder to put it in); returns the path."""
        dest = Path(dest)
        async with self._http().get(
            self.url(f"/rtc/recordings/{recording_id}"),
            headers=self._headers(None),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=self.timeout),
            ssl=self.ssl,
        ) as response:
            if response.status >= 400:
                await self._decode(response)
            if dest.is_dir():
                dest = dest / Path(recording_id).name
            with dest.open("wb") as out:
                async for chunk in response.content.iter_chunked(64 * 1024):
                    out.write(chunk)
        return dest

    async def delete_recording(self, recording_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("DELETE", f"/rtc/recordings/{recording_id}")
        return result

    # -- messages -------------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Messages for this peer (``signal``, ``peer:connected``, ``peer:disconnected``, ``error``).

        Ends when the peer disconnects, is replaced by a newer connection, or the client closes;
        raises :class:`ConnectionLost` (or the server's error) if the server ended the peer.
        """
        while True:
            item = await self._next_item()
            if item is None:
                return
            yield item

    async def next_message(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message (``asyncio.TimeoutError`` after ``timeout`` s); raises
        :class:`ConnectionLost` if the stream has ended."""
        item = await asyncio.wait_for(self._next_item(), timeout)
        if item is None:
            raise ConnectionLost(f"The message stream has ended ({self.closed_reason}).")
        return item

    async def _next_item(self) -> dict[str, Any] | None:
        if self.info is None and self._queue is None:
            raise RuntimeError("messages() before connect()")
        if self._queue is None:  # connected with listen=False: start listening now
            self._start_receiver()
        queue = self._queue
        assert queue is not None
        item = await queue.get()
        if item is _CLOSE_DONE:
            queue.put_nowait(item)  # later readers end too
            return None
        if isinstance(item, BaseException):
            queue.put_nowait(_CLOSE_DONE)
            raise item
        result: dict[str, Any] = item
        return result

    async def _join_over_websocket(
        self, body: dict[str, Any], proof: str | None
    ) -> tuple[dict[str, Any], aiohttp.ClientWebSocketResponse] | None:
        """Join in the WebSocket upgrade (one round trip, docs/protocol.md): the ``Connect``
        answer is the socket's first frame. None when the server or a proxy refuses the upgrade
        or answers something else: the caller then joins with ``POST /rtc/connect``, which says
        why when it is an error of the join itself (room full, bad JWT...)."""
        params = self._with_room({"roomId": body["roomId"]}, body)  # and ?room= for room affinity
        for key in ("peerId", "authToken"):
            if key in body:
                params[key] = body[key]
        if "metadata" in body:
            params["metadata"] = json.dumps(body["metadata"], separators=(",", ":"))
        headers = {"Authorization": f"Bearer {proof}"} if proof else None
        try:
            ws = await asyncio.wait_for(
                self._http().ws_connect(self.ws_url("/rtc/ws"), params=params, headers=headers, ssl=self.ssl),
                self.timeout,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.debug("joining over the WebSocket failed (%s); joining with POST /rtc/connect", exc)
            return None
        try:
            first = await ws.receive(timeout=self.timeout)
            data = first.json() if first.type is aiohttp.WSMsgType.TEXT else None
        except (asyncio.TimeoutError, ValueError, aiohttp.ClientError):
            data = None
        if not isinstance(data, dict) or data.get("type") != "connected":
            await ws.close()
            return None
        data.pop("type")
        return data, ws

    def _start_receiver(self, first_socket: aiohttp.ClientWebSocketResponse | None = None) -> None:
        self._queue = asyncio.Queue(self._queue_size)
        self._receiver = asyncio.create_task(self._receive_forever(first_socket), name="rtc-client-receiver")

    async def _receive_forever(self, first_socket: aiohttp.ClientWebSocketResponse | None = None) -> None:
        assert self._queue is not None and self.info is not None
        queue, token = self._queue, self.info["token"]
        where = f"peer {self.info['peerId']} in room {self.info['roomId']}"
        mode = "poll" if self.transport == "poll" else "ws"
        backoff = 0.0
        try:
            while not self._closing:
                if backoff:
                    await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # jitter spreads reconnects
                opened = time.monotonic()
                try:
                    if mode == "ws":
                        socket, first_socket = first_socket, None
                        ended = await self._read_websocket(token, queue, where, socket)
                    else:
                        ended = await self._read_polls(token, queue)
                    if ended is not None:
                        self.closed_reason = ended
                        await queue.put(_CLOSE_DONE)
                        return
                    self.reconnects += 1
                    lived = time.monotonic() - opened
                    if mode == "ws" and self.last_close_code == CloseCode.SERVICE_RESTART:
                        # The server is draining: connect again at once (the jitter spreads its
                        # peers), with the same token; behind a load balancer, another process
                        # takes the socket and the membership is kept.
                        backoff = RESTART_RECONNECT_S
                    else:
                        # The server closed a working socket (going away, network trouble): come
                        # back soon, but a socket that keeps closing at once must not become a
                        # tight loop.
                        backoff = 0.2 if lived > 10 else min(max(backoff * 2, 0.2), self.max_backoff)
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status == 401:
                        raise Unauthorized("The server no longer accepts this peer's token.") from exc
                    if exc.status == 429 or exc.status >= 500:  # busy or restarting: try the socket again
                        retry_after = exc.headers.get("Retry-After") if exc.headers else None
                        if retry_after is not None:  # 503 draining says 1 s: another process soon
                            backoff = min(max(_int_or(retry_after, 1), 0.2), self.max_backoff)
                        else:
                            backoff = min(max(backoff * 2, 1.0), self.max_backoff)
                        log.info(
                            "%s: WebSocket refused (HTTP %s); retrying in about %.1f s", where, exc.status, backoff
                        )
                    elif self.transport == "ws":
                        raise
                    else:  # e.g. a proxy that does not pass upgrades
                        log.info("%s: WebSocket refused (HTTP %s); falling back to long-poll", where, exc.status)
                        mode = "poll"
                except (errors.RateLimited, errors.CapacityExceeded, ServerError) as err:  # busy, not fatal
                    backoff = min(max(backoff * 2, 1.0, float(getattr(err, "retry_after", 0))), self.max_backoff)
                    log.info("%s: long-poll refused (%s); retrying in about %.1f s", where, err.code, backoff)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                    backoff = min(max(backoff * 2, 0.2), self.max_backoff)
                    log.info("%s: message channel lost (%s); retrying in about %.1f s", where, exc, backoff)
                finally:
                    self.channel = None
        except asyncio.CancelledError:
            raise
        except RtcError as err:
            self.closed_reason = err.code
            self._put_nowait_end(err)
        except Exception as exc:  # the loop boundary: hand the failure to the reader
            log.exception("%s: message receiver failed", where)
            self.closed_reason = "error"
            self._put_nowait_end(exc)

    async def _read_websocket(
        self,
        token: str,
        queue: asyncio.Queue[Any],
        where: str,
        opened: aiohttp.ClientWebSocketResponse | None = None,
    ) -> str | None:
        """Read one WebSocket (``opened``, the one the join came over, or a new one) to its end; a
        reason when the stream is over, None to reconnect."""
        if opened is None:
            opened = await self._http().ws_connect(
                self.ws_url("/rtc/ws"), params=self._with_room({"token": token}), ssl=self.ssl
            )
        async with opened as ws:
            self._ws, self.channel = ws, "ws"
            log.debug("%s: WebSocket open", where)
            try:
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        data = msg.json()
                        frame_id = data.get("id") if isinstance(data, dict) else None
                        future = self._acks.get(frame_id) if isinstance(frame_id, int) else None
                        if future is not None and data.get("type") in ("ack", "error"):
                            if not future.done():
                                future.set_result(data)
                            continue
                        await queue.put(data)
                    elif msg.type is aiohttp.WSMsgType.ERROR:
                        break
            finally:
                self._ws = None
                for future in self._acks.values():  # sent, but whether it was relayed is unknown
                    if not future.done():
                        future.set_exception(ConnectionLost("The WebSocket closed before the signal was acknowledged."))
            code = ws.close_code
        self.last_close_code = code
        log.info("%s: WebSocket closed by the server (code %s)", where, code)
        if self._closing:
            return "closed"
        if code == CloseCode.REPLACED:
            return "replaced"
        if code == CloseCode.LEFT:
            return "left"
        if code == CloseCode.REMOVED:
            raise ConnectionLost("The server disconnected this peer (timeout).")
        return None  # going away, network trouble: try again

    async def _read_polls(self, token: str, queue: asyncio.Queue[Any]) -> str | None:
        self.channel = "poll"
        wait_ms = self.poll_wait_ms
        while not self._closing:
            body = await self.request(
                "GET", "/rtc/poll", token=token, params={"waitMs": str(wait_ms)}, timeout=wait_ms / 1000 + self.timeout
            )
            for message in body.get("messages", []):
                await queue.put(message)
        return "closed"

    async def _heartbeat_forever(self) -> None:
        assert self.info is not None
        interval = max(self.info.get("heartbeatIntervalMs", 30_000) / 1000, 0.05)
        room_id, peer_id = self.info["roomId"], self.info["peerId"]
        while True:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat(room_id, peer_id)
            except asyncio.CancelledError:
                raise
            except (errors.Unauthorized, errors.NotFound) as err:
                log.warning(
                    "peer %s in room %s: heartbeat refused (%s); stopping heartbeats", peer_id, room_id, err.code
                )
                return
            except Exception as exc:  # transient: the next beat may get through
                log.info("peer %s in room %s: heartbeat failed: %s", peer_id, room_id, exc)
