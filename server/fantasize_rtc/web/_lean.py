"""``GET /rtc/ws`` without aiohttp's request machinery: the WebSocket of ``fantasize-rtc serve``.

A peer's socket is the whole of a join when clients join in the upgrade (docs/protocol.md), and a
reconnect storm is thousands of them at once. Through aiohttp each one costs a request object, the
middleware chain, a response with its headers, a ``WebSocketResponse`` with its writer, reader and
queue, a handler task and a keep-alive task: about three quarters of the server's time per join
went there (BENCHMARKS.md, "Joins, reconnect storms and quiet latency"). This module is the same
socket, lean:

- :class:`LeanUpgrades` is the guarded site's :data:`~fantasize_rtc._aiohttp_compat.Takeover`: it
  takes a connection whose first read is a whole, plain ``GET /rtc/ws`` upgrade (request line and
  headers it parses strictly, nothing it does not expect) and leaves anything else to aiohttp,
  untouched: other routes, a head split over reads, anything unusual. Which way a socket came in
  is invisible to its client.
- the admission is the route's own (:func:`~._socket.admit`: drain, origin, the join or the token,
  the same errors as the same JSON answers), and so is the open socket's life
  (:func:`~._socket.session`: attach, frames, detach), its frames (``_PeerFrames``), its writes
  (:class:`~._channel.WebSocketChannel`), counts, log lines and drain;
- :class:`LeanSocket` is the WebSocket itself: frames parsed by aiohttp's compiled reader
  (:class:`~fantasize_rtc._aiohttp_compat.MessageParser`), text frames handled in the read
  callback as ``FrameWebSocketResponse`` does, control frames answered there too, the close
  handshake as aiohttp does it. No task runs per socket until its handler waits (Redis) or it
  closes.

Apps made by :func:`~._app.create_app` served some other way (embedded in another aiohttp app,
``web.run_app``) keep aiohttp's route; so does an app a plugin added a middleware to (the lean
path would go around it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextvars
import functools
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from .. import logs
from .._aiohttp_compat import (
    FrameHandler,
    HandOver,
    MessageParser,
    Takeover,
    handle_frame,
    start_eagerly,
    start_frame,
)
from ..errors import RtcError
from ..protocol import CloseCode
from ._channel import SOCKETS_KEY, WRITE_BATCH_KEY, WebSocketChannel, text_frame
from ._drain import DRAIN_KEY
from ._lean_http import HEADER_LINES, LeanPosts, LeanRequest, encode_answer, parse_head, peer_of
from ._middleware import cors_allows
from ._proxy import TrustedProxies
from ._requests import COUNTERS_KEY, RTC_KEY, error_response, json_response
from ._socket import BINARY_REFUSED, CLOSE_TIMEOUT, PeerFrames, admit, connected_frame

__all__ = ["LEAN_KEY", "LeanSocket", "LeanUpgrades", "parse_upgrade"]

log = logging.getLogger("fantasize_rtc.web")

_ROUTE = "/rtc/ws"

# -- the request head --------------------------------------------------------------------------

#: The heads this path takes: its request line, then header lines; anything else is aiohttp's.
_HEAD = re.compile(r"GET (/rtc/ws(?:\?[!-~]*)?) HTTP/1\.1" + HEADER_LINES)
#: Headers an upgrade carries once; twice is aiohttp's to judge.
_ONCE = ("host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def parse_upgrade(data: bytes) -> tuple[str, CIMultiDict[str], bytes] | None:
    """(target, headers, the bytes after the head) when ``data`` begins with a whole, plain
    WebSocket upgrade of ``GET /rtc/ws``; None for anything else (aiohttp's then)."""
    parsed = parse_head(data, _HEAD)
    if parsed is None:
        return None
    head, headers, end = parsed
    for name in _ONCE:
        if len(headers.getall(name, ())) != 1:
            return None
    if "content-length" in headers or "transfer-encoding" in headers:
        return None
    if headers["upgrade"].lower() != "websocket" or headers["sec-websocket-version"] != "13":
        return None
    if "upgrade" not in (token.strip().lower() for token in headers["connection"].split(",")):
        return None
    try:
        if len(base64.b64decode(headers["sec-websocket-key"], validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return head[1], headers, data[end:]


# -- the socket --------------------------------------------------------------------------------

_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
_ERROR = WSMsgType.ERROR  # a protocol error of the client's (the reader's exception)
#: Bytes of messages held while a handler waits before the socket stops reading (it reads again
#: at a quarter): aiohttp's queue holds as much before it pauses.
_BACKLOG_PAUSE = 256 * 1024
#: Bytes a client may send before its upgrade is answered (it should send none).
_EARLY_LIMIT = 64 * 1024


def _close_frame(code: int, message: bytes) -> bytes:
    payload = code.to_bytes(2, "big") + message[:123]
    return bytes((0x88, len(payload))) + payload


class LeanSocket(asyncio.Protocol):
    """A peer's WebSocket on its own transport, from the upgrade's answer to the connection's end.

    What ``PeerFrames`` and :class:`~._channel.WebSocketChannel` use of aiohttp's
    ``WebSocketResponse`` (``closed``, ``close()``, ``begin_close()``), with aiohttp's behaviour:
    pings answered, pongs ignored, a client's close answered with 1000 and the connection closed,
    a protocol error (bad frame, too large, bad UTF-8) closed with its code, our close waiting up
    to :data:`~._socket.CLOSE_TIMEOUT` for the client's answer before the connection is cut; and
    binary frames closed with 1003 as the route does.

    Text frames go to the handler in the read callback; when it waits (Redis), what arrives meanwhile
    is held, in order, until it is done (control frames too, so a close never overtakes a signal).
    """

    __slots__ = (
        "_backlog",
        "_close_task",
        "_closing",
        "_done",
        "_early",
        "_gone",
        "_handler",
        "_held",
        "_parser",
        "_paused",
        "_release",
        "_running",
        "_stopped",
        "_timer",
        "close_code",
        "closed",
        "flush",
        "open",
        "task",
        "transport",
    )

    def __init__(self, transport: asyncio.Transport, release: Callable[[], None], max_msg_size: int) -> None:
        self.transport = transport
        self._release: Callable[[], None] | None = release
        # Text frames reach the handler as bytes: their UTF-8 is checked as they are parsed (PeerFrames)
        self._parser: MessageParser | None = MessageParser(
            self, max_msg_size, self._on_message, self._on_error, decode_text=False
        )
        self.open = False  # the upgrade is answered
        self.closed = False  # a close frame went out, or the connection is gone
        self.close_code: int | None = None
        #: Writes what the socket's channel holds; called before a close frame goes out.
        self.flush: Callable[[], object] | None = None
        self._early: bytes | None = b""  # what came before the upgrade's answer (None: too much)
        self._handler: FrameHandler | None = None
        self._running: asyncio.Task[Any] | None = None  # a handler that waits
        self._backlog: collections.deque[Any] = collections.deque()
        self._held = 0  # bytes in the backlog
        self._paused = False
        self._stopped = False  # text frames are no longer handled
        self._gone = False  # the connection is gone
        self._done: Callable[[], object] | None = None  # called once when it is, and no handler runs
        self._close_task: asyncio.Future[bool] | None = None  # a close this socket began itself
        self._closing: asyncio.Future[bool] | None = None  # our close frame is out: done at the end
        self._timer: asyncio.TimerHandle | None = None  # cuts the connection if the client never answers
        #: The upgrade's coroutine when the join waited (on Redis): a reference, so it is not collected.
        self.task: asyncio.Future[Any] | None = None

    # -- the upgrade -----------------------------------------------------------------------

    def accept(self, key: str, first: str | None) -> bool:
        """Answer the upgrade (and send ``first``, the join's answer, in the same write); False
        when the client has gone meanwhile."""
        if self._gone:
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
        answer = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        if first is not None:
            answer += text_frame(first)
        self.transport.write(answer)
        self.open = True
        early, self._early = self._early, b""
        if early is None:
            self.transport.abort()  # the client sent more than a handshake's worth before its answer
        elif early and self._parser is not None:
            self._parser.feed(early)
        return True

    def refuse(self, answer: bytes) -> None:
        """Answer the upgrade with an error, then close."""
        self.closed = True
        self._stop()
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is not None and self.open:
            self._parser.feed(data)
        elif self._early is not None:  # the answer is on its way (the join waits on Redis)
            self._early += data
            if len(self._early) > _EARLY_LIMIT:
                self._early = None

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.close_code is None:
            self.close_code = 1006  # no close frame came (RFC 6455 7.1.5)
        self._stop()
        self._gone = True
        self._parser = None  # (it refers back to this socket: no cycle left for the collector)
        closing = self._closing
        if closing is not None and not closing.done():
            closing.set_result(True)
        release, self._release = self._release, None
        if release is not None:
            release()
        if self._running is None:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()
        # what refers back to this socket, so that it goes as soon as the transport lets it go
        self._handler = None
        self.flush = None
        self._backlog.clear()
        self._held = 0

    # -- what the session uses ---------------------------------------------------------------

    def start(self, handler: FrameHandler) -> None:
        """Hand text frames to ``handler`` from now on (those that came before first), until it
        returns False, or a close, a protocol error or a binary frame comes."""
        self._handler = handler
        self._drain_backlog()

    def when_done(self, done: Callable[[], object]) -> None:
        """Call ``done`` once the connection is gone and no handler runs (now, if so already)."""
        self._done = done
        if self._gone and self._running is None:
            self._finish()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Send a close frame and wait (up to ``CLOSE_TIMEOUT``) for the client's; False when
        the socket was closed already. Cancelled, it cuts the connection."""
        return await self.begin_close(code, message)

    def begin_close(self, code: int, message: bytes) -> asyncio.Future[bool]:
        """:meth:`close` without waiting: the future is done when the connection is (the client
        answered, or ``CLOSE_TIMEOUT`` passed and it was cut); cancelling it cuts it at once."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.closed:
            done.set_result(False)
            return done
        self.closed = True
        self._stop()
        self._drain_backlog()  # a held close from the client is answered, not waited for
        if self.flush is not None:
            self.flush()
        transport = self.transport
        if transport.is_closing():
            done.set_result(True)
            return done
        transport.write(_close_frame(code, message))
        self.close_code = code
        self._closing = done
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
        done.add_done_callback(self._closing_done)
        return done

    def _closing_done(self, done: asyncio.Future[bool]) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if done.cancelled():
            self.transport.abort()

    def abort(self) -> None:
        self.transport.abort()

    # -- messages ------------------------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        handler = self._handler
        if handler is not None and msg[0] is _TEXT and self._running is None and not self._backlog:
            # Most messages: a text frame, nothing ahead of it. (_handle, inlined: per frame.)
            if self._stopped:
                return
            try:
                outcome = handler(msg[1])
            except Exception:
                log.exception("frame handler failed")
                return
            if outcome is not True:
                self._handled(outcome if outcome is False else start_frame(outcome))
        # Held while a handler waits, and until serving begins (or the socket stops reading)
        elif self._running is not None or self._backlog or (handler is None and not self._stopped):
            self._hold(msg)
        else:
            self._handle(msg)

    def _on_error(self, exc: BaseException) -> None:
        self._on_message((_ERROR, exc, None))

    def _hold(self, msg: Any) -> None:
        self._backlog.append(msg)
        data = msg[1]
        if isinstance(data, (str, bytes)):
            self._held += len(data)
        if self._held > _BACKLOG_PAUSE and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _handle(self, msg: Any) -> None:
        kind = msg[0]
        if kind is _TEXT:
            if self._stopped or self._handler is None:
                return
            self._handled(handle_frame(self._handler, msg[1]))
        elif kind is _PING:
            if not self.closed:
                if self.flush is not None:  # after the frames queued before it
                    self.flush()
                payload = msg[1]
                self.transport.write(bytes((0x8A, len(payload))) + payload)
        elif kind is _PONG:
            pass
        elif kind is _CLOSE:
            self._stop()
            if not self.closed:  # the client closes: answer, as aiohttp does, with 1000
                self.closed = True
                self.close_code = msg[1]
                if self.flush is not None:
                    self.flush()
                self.transport.write(_close_frame(1000, b""))
            self.transport.close()
        elif kind is _ERROR:
            code = getattr(msg[1], "code", 1002)
            self._begin_close(code, b"")
        else:  # binary
            self._begin_close(1003, BINARY_REFUSED)

    def _handled(self, outcome: bool | asyncio.Task[Any] | None) -> None:
        """What the handler said of a text frame (:func:`handle_frame`): stop, wait, or go on."""
        if outcome is False:
            self._stop_reading()
        elif isinstance(outcome, asyncio.Task):
            self._running = outcome
            outcome.add_done_callback(self._handler_done)

    def _begin_close(self, code: int, message: bytes) -> None:
        self._stop()
        if not self.closed and self._close_task is None:
            self._close_task = self.begin_close(code, message)

    def _handler_done(self, running: asyncio.Task[Any]) -> None:
        self._running = None
        if not running.cancelled():
            if (exc := running.exception()) is not None:
                log.error("frame handler failed", exc_info=exc)
            elif not running.result():
                self._stop_reading()
        if self._gone:
            self._finish()
        else:
            self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Handle what was held, in order, until a handler waits again."""
        backlog = self._backlog
        while backlog and self._running is None and (self._handler is not None or self._stopped):
            msg = backlog.popleft()
            if isinstance(msg[1], (str, bytes)):
                self._held -= len(msg[1])
            self._handle(msg)
        if self._paused and self._held <= _BACKLOG_PAUSE // 4:
            self._paused = False
            self.transport.resume_reading()

    def _stop(self) -> None:
        self._stopped = True

    def _stop_reading(self) -> None:
        """The handler said so: a socket nobody reads is closed (its handler began that already)."""
        self._stop()
        if not self.closed:
            self._begin_close(1000, b"")


# -- the takeover ---------------------------------------------------------------------------------


class LeanUpgrades:
    """The guarded site's takeover for one app (``app[LEAN_KEY]``, made by ``create_app``)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._middlewares: tuple[Any, ...] = ()
        #: Sockets whose upgrade is not answered yet (the join waits): cut off at shutdown.
        self.handshaking: set[LeanSocket] = set()
        #: Connections taken (a WebSocket upgrade of this path, answered here either way).
        self.taken = 0
        #: The keep-alive JSON POSTs (``web._lean_http``), once the site asked for the takeover.
        self.posts: LeanPosts | None = None

    def expect_middlewares(self, middlewares: list[Any]) -> None:
        """The middlewares ``create_app`` installed: the lean path does what they do."""
        self._middlewares = tuple(middlewares)

    def takeover(self, idle_timeout: float) -> Takeover | None:
        """The hook for the site, or None when the app has middlewares this path would bypass
        (a plugin's, or an embedder's). Call once the app is frozen (started). Keep-alive
        connections this path serves close after ``idle_timeout`` seconds without a request."""
        if tuple(self.app.middlewares) != self._middlewares:
            log.info("a middleware was added to the app: WebSocket upgrades and JSON POSTs go through aiohttp")
            return None
        rtc = self.app[RTC_KEY]
        self._rtc = rtc
        self._counters = self.app[COUNTERS_KEY]
        self._drain = self.app[DRAIN_KEY]
        self._sockets = self.app[SOCKETS_KEY]
        self._batch = self.app[WRITE_BATCH_KEY]
        config = rtc.config
        self._max_frame = config.max_frame_bytes
        self._cors = config.cors_origins
        self._proxies = TrustedProxies(config.trusted_proxies) if config.trusted_proxies else None
        self.posts = LeanPosts(
            rtc,
            counters=self._counters,
            drain=self._drain,
            cors=self._cors,
            proxies=self._proxies,
            max_body=self.app._client_max_size,
            idle_timeout=idle_timeout,
        )
        self._take_post = self.posts.take
        return self._take

    def _take(
        self,
        transport: asyncio.Transport,
        data: bytes,
        release: Callable[[], None],
        hand_over: HandOver,
    ) -> bool:
        if not data.startswith(b"GET "):  # (POST, OPTIONS)
            return self._take_post(transport, data, release, hand_over)
        parsed = parse_upgrade(data)
        if parsed is None:
            return False
        target, headers, rest = parsed
        request = LeanRequest.on(peer_of(transport), target, headers, self._proxies)
        self.taken += 1
        sock = LeanSocket(transport, release, self._max_frame)
        transport.set_protocol(sock)
        if rest:
            sock.data_received(rest)
        serve = self._serve(sock, request)
        if not self._rtc.backend.immediate:  # the join waits on a store: a task, as aiohttp's
            sock.task = asyncio.ensure_future(serve)
            return True
        # In this read callback, in a context of its own, as aiohttp's handler task has: the log
        # fields bound below are this socket's, and the tasks it starts inherit them.
        try:
            sock.task = contextvars.copy_context().run(start_eagerly, serve)
        except Exception:  # a bug: this connection is lost, the server goes on
            log.exception("the WebSocket upgrade failed")
            sock.abort()
        return True

    async def _serve(self, sock: LeanSocket, request: LeanRequest) -> None:
        """The upgrade (``admit``, the answer), then the socket's life in callbacks: attached to its
        peer, frames handled as they come, and :meth:`_done` when the connection is gone."""
        counting = self._drain.request_started()  # the drain lets a socket finish, as a request
        self.handshaking.add(sock)
        rtc = self._rtc
        try:
            room_id, peer_id, joined = await admit(request, rtc)
        except RtcError as err:
            self._refuse(sock, request, err.code, error_response(err))
            sock.when_done(functools.partial(self._done, None, counting))
            return
        except Exception:
            logs.bind(address=request.remote)
            log.exception("unhandled error on GET %s", _ROUTE)
            error = {"error": {"code": "internal_error", "message": "Internal server error."}}
            self._refuse(sock, request, "internal_error", json_response(error, status=500))
            sock.when_done(functools.partial(self._done, None, counting))
            return
        finally:
            self.handshaking.discard(sock)
        logs.bind(address=request.remote, room=room_id, peer=peer_id)
        if not sock.accept(request.headers["Sec-WebSocket-Key"], connected_frame(joined) if joined else None):
            log.info("peer %s in room %s left during the WebSocket handshake", peer_id, room_id)
            sock.when_done(functools.partial(self._done, None, counting))
            return
        self._counters.answered(_ROUTE, "GET", 101, None)
        channel = WebSocketChannel(sock, sock.transport, self._batch)
        sock.flush = channel.flush
        self._sockets.add(channel)
        log.info("peer %s in room %s opened a WebSocket", peer_id, room_id)
        # the log fields bound above are those of the lines _done writes
        done = functools.partial(
            contextvars.copy_context().run, self._done, (sock, channel, room_id, peer_id), counting
        )
        try:
            if rtc.draining:  # the drain began during the join: this one is asked to reconnect too
                channel.begin_close(CloseCode.SERVICE_RESTART, "server restarting: connect again")
            else:  # (not attached then: its outbox stays in the backend for the next socket)
                await rtc.attach_channel(room_id, peer_id, channel)
                sock.start(PeerFrames(rtc, sock, channel, room_id, peer_id, joined=joined is not None).handle)
        except RtcError as err:  # the backend failed (Redis unreachable): the client tries again
            log.warning("peer %s in room %s: its WebSocket could not be attached (%s)", peer_id, room_id, err.message)
            channel.begin_close(CloseCode.SERVICE_RESTART, "try again")
        except Exception:  # a bug: no socket is left open and unread
            log.exception("attaching the WebSocket of peer %s in room %s failed", peer_id, room_id)
            channel.begin_close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            sock.when_done(done)

    def _done(self, peer: tuple[LeanSocket, WebSocketChannel, str, str] | None, counting: bool) -> None:
        """A lean socket's connection is gone: let its peer's channel go, as the route's
        ``session`` does, and the drain know."""
        if peer is not None:
            sock, channel, room_id, peer_id = peer
            self._rtc.detach_channel(room_id, peer_id, channel)
            log.info("peer %s in room %s closed its WebSocket (code %s)", peer_id, room_id, sock.close_code)
        if counting:
            self._drain.request_ended()

    def _refuse(self, sock: LeanSocket, request: LeanRequest, code: str, response: web.Response) -> None:
        """Answer with ``response`` (the route's error answer) as HTTP/1.1, and close."""
        self._counters.answered(_ROUTE, "GET", response.status, code)
        origin = request.headers.get("Origin")
        sock.refuse(encode_answer(response, origin if cors_allows(self._cors, origin) else None, close=True))

    def shut(self) -> None:
        """At shutdown: cut off the sockets whose join still waits, close the keep-alive
        connections (the busy ones after their answer)."""
        for sock in list(self.handshaking):
            sock.abort()
        if self.posts is not None:
            self.posts.close_all()


LEAN_KEY = web.AppKey("lean_upgrades", LeanUpgrades)
