"""Everything this package does inside aiohttp, behind one version gate (:func:`supported`).

Three things, each with a fallback on an aiohttp it was not checked against:

1. **Text frames handled as aiohttp parses them** (:class:`FrameWebSocketResponse`), below.
2. **A guarded HTTP server** (:class:`GuardedSite`, :class:`GuardedRequestHandler`): a connection
   limit per client address, and malformed requests answered with this package's JSON error
   shape and a one-line warning instead of aiohttp's text body, which quotes the offending header
   (tokens and cookies included), and its ERROR traceback. Fallback: a plain ``TCPSite``.
3. **Connections taken over before aiohttp** (:data:`Takeover`, :class:`MessageParser`): the
   guarded site lets a hook look at a connection's first bytes and take the connection for a
   protocol of its own (the lean WebSocket of ``web._lean``), which parses frames with aiohttp's
   compiled reader and its own sink. Fallback: every connection goes to aiohttp.

Text frames, without a task wake-up per frame
----------------------------------------------

aiohttp hands every parsed WebSocket message to a queue, and the socket's handler task wakes up
to ``receive()`` it: a future, a task step and ``receive()``'s bookkeeping per message. With many
busy sockets each read carries one frame, and that wake-up costs as much as our whole relay
(BENCHMARKS.md, issue 6). :class:`FrameWebSocketResponse` keeps aiohttp's parser (compiled, strict)
and its queue, and adds a frame handler that the queue calls as soon as a text frame is parsed:

- the handler runs at once, in the read callback; it returns its answer there when it handled
  the frame without waiting (with the memory backend: always), or a coroutine that carries on;
- when it does suspend (a Redis round trip), the rest runs as a task, and later frames wait in
  aiohttp's queue until it is done: frames are handled one at a time, in order, as before;
- control frames (close, ping, pong), binary frames and errors go through the queue untouched, so
  the handler task's ``async for msg in ws`` still sees them and aiohttp still does the close
  handshake, pongs and size limits.

This reaches into aiohttp: it builds the response's queue and parser itself (``_post_start``), so
it is used only with the aiohttp versions it was written and tested against
(:data:`FAST_FRAMES`); elsewhere :class:`FrameWebSocketResponse` is a plain
``WebSocketResponse`` whose frames all go through the queue, and the handler runs from the task.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import types
from collections.abc import Callable, Coroutine, Generator, Mapping
from http.cookies import SimpleCookie
from typing import Any, Protocol, cast

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp import http_parser as _http_parser
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "FAST_FRAMES",
    "GUARDED_SERVER",
    "ConnectionGate",
    "FrameHandler",
    "FrameWebSocketResponse",
    "GuardedRequestHandler",
    "GuardedSite",
    "HandOver",
    "MessageParser",
    "SINGLETON_HEADERS",
    "Takeover",
    "handle_frame",
    "parse_cookies",
    "run_handler",
    "start_eagerly",
    "start_frame",
    "supported",
]

log = logging.getLogger(__name__)

#: Handles one text frame; returns False to stop reading the socket (it is closing). It returns
#: the bool itself when it handled the frame at once (most frames: no coroutine made), or a
#: coroutine of it that carries on where it has to wait. The frame is a str (aiohttp's socket), or
#: its bytes from a :class:`MessageParser` made with ``decode_text=False`` (their UTF-8 unchecked:
#: the handler must check it).
FrameHandler = Callable[[Any], "bool | Coroutine[Any, Any, bool]"]

_TEXT = WSMsgType.TEXT


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
    """Run ``coro`` now, up to its first suspension: None when it finished (its result is
    dropped; exceptions propagate), else a task that carries on from where it stopped. Python
    3.12's eager tasks do this; 3.11 has none."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return _carry_on_in_task(coro, yielded)


def _carry_on_in_task(coro: Coroutine[Any, Any, Any], yielded: Any) -> asyncio.Task[Any]:
    """A task that carries on ``coro``, which suspended by yielding ``yielded``; its result is
    the coroutine's."""
    task = asyncio.ensure_future(_carry_on(coro, yielded))
    # A task cancelled before its first step never runs its coroutine, so ``coro`` would never
    # hear of it: close it then (its ``finally`` blocks run; a finished coroutine ignores this).
    task.add_done_callback(lambda _: coro.close())
    return task


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    # What ``await`` does for a coroutine that has already started: hand the task what the
    # coroutine is waiting for (a future, or None to yield a pass) and pass back what the task
    # sends or throws when that is done.
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # cancellation and errors go to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def supported(version: str) -> bool:
    """Whether this module was written and checked against this aiohttp version (3.14)."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) == (3, 14)


try:
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    from aiohttp.helpers import DEFAULT_CHUNK_SIZE
except ImportError:  # pragma: no cover - an aiohttp whose internals moved
    FAST_FRAMES = False
    WebSocketDataQueue = object  # type: ignore[assignment, misc]  # no _FrameQueue is made then
else:
    #: Whether text frames are handled as they are parsed (this aiohttp is one we know).
    FAST_FRAMES = supported(aiohttp.__version__)


def handle_frame(handler: FrameHandler, text: str | bytes) -> bool | asyncio.Task[Any] | None:
    """Run ``handler(text)`` now (:func:`start_eagerly` for a frame handler): its result when it
    finished, the task that carries it on when it waits, None when it failed (logged: a bug in
    the handler must not end the socket)."""
    try:
        outcome = handler(text)
    except Exception:
        log.exception("frame handler failed")
        return None
    if outcome is True or outcome is False:  # handled at once
        return outcome
    return start_frame(outcome)


def start_frame(coro: Coroutine[Any, Any, bool]) -> bool | asyncio.Task[Any] | None:
    """The coroutine a frame handler returned, run now up to its first suspension: as
    :func:`handle_frame` answers."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return bool(stop.value)
    except Exception:
        log.exception("frame handler failed")
        return None
    return _carry_on_in_task(coro, yielded)


async def run_handler(handler: FrameHandler, text: str | bytes) -> bool:
    """``handler(text)``, awaited when it has to wait."""
    outcome = handler(text)
    return outcome if outcome is True or outcome is False else await outcome


class _FrameQueue(WebSocketDataQueue):  # type: ignore[misc, valid-type]
    """aiohttp's message queue, calling the frame handler for a text frame when nothing is ahead
    of it (queued, or a handler still running)."""

    def __init__(self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(protocol, limit, loop=loop)
        self.handler: FrameHandler | None = None
        self.running: asyncio.Future[Any] | None = None  # a handler that suspended
        self.stopped = False

    def feed_data(self, data: Any, size: int) -> None:
        handler = self.handler
        if handler is None or data[0] is not _TEXT or self._buffer or self.running is not None:
            super().feed_data(data, size)
            return
        if self.stopped:
            return
        outcome = handle_frame(handler, data[1])
        if outcome is False:
            self.stopped = True
        elif isinstance(outcome, asyncio.Task):
            self.running = outcome
            outcome.add_done_callback(self._done)

    def _done(self, running: asyncio.Future[Any]) -> None:
        self.running = None
        if running.cancelled():
            return
        if (exc := running.exception()) is not None:
            log.error("frame handler failed", exc_info=exc)
        elif not running.result():
            self.stopped = True


class FrameWebSocketResponse(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose text frames go to :meth:`handle_frames`'s handler as they
    are parsed (when :data:`FAST_FRAMES`)."""

    _frames: _FrameQueue | None = None

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        if not FAST_FRAMES:
            super()._post_start(request, protocol, writer)
            return
        # aiohttp 3.14's _post_start, with our queue in place of WebSocketDataQueue.
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        loop = self._loop
        assert loop is not None
        self._frames = self._reader = _FrameQueue(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop)
        self._parser = WebSocketReader(
            self._reader, self._max_msg_size, compress=bool(self._compress), decode_text=self._decode_text
        )
        cb = None if self._heartbeat is None else self._on_data_received
        request.protocol.set_parser(self._parser, data_received_cb=cb)
        request.protocol.keep_alive(False)

    def begin_close(self, code: int, message: bytes) -> asyncio.Future[bool]:
        """``close()`` as a task: cancelling it cuts the connection (aiohttp's close does)."""
        return asyncio.ensure_future(self.close(code=code, message=message))

    def handle_frames(self, handler: FrameHandler) -> None:
        """From now on, text frames go to ``handler`` as they are parsed."""
        if self._frames is not None:
            self._frames.handler = handler

    async def finish_frames(self) -> None:
        """Stop handling frames and wait for a handler still running (one that suspended). If
        this is cancelled (aiohttp cancels a socket's handler when its client goes, and at
        shutdown), that handler is cancelled too: none is left running."""
        frames = self._frames
        if frames is None:
            return
        frames.handler = None
        frames.stopped = True
        running = frames.running
        if running is not None and not running.done():
            try:
                await asyncio.wait([running])
            except asyncio.CancelledError:
                running.cancel()
                raise

    async def run_queued(self, handler: FrameHandler, text: str) -> bool:
        """Handle a text frame that went through the queue (it arrived while a handler was
        running, or there is no fast path): after the running one, like the others."""
        frames = self._frames
        if frames is None:
            return await run_handler(handler, text)
        while frames.running is not None:
            await asyncio.wait([frames.running])
        if frames.stopped:
            return False
        frames.running = asyncio.get_running_loop().create_future()  # hold the fast path back
        try:
            if not await run_handler(handler, text):
                frames.stopped = True
            return not frames.stopped
        finally:
            marker, frames.running = frames.running, None
            marker.set_result(None)


# -- the guarded HTTP server -----------------------------------------------------------------------


class ConnectionGate(Protocol):
    """Admits connections (:class:`fantasize_rtc.serving.ConnectionLimiter` is one)."""

    def admit(self, address: str) -> bool: ...

    def release(self, address: str) -> None: ...

    def malformed(self, address: str, status: int, what: str) -> None:
        """A malformed request came from ``address`` (log it, without the request's bytes)."""

    def no_request(self, address: str, seconds: float) -> None:
        """A connection from ``address`` closed after ``seconds`` without one complete request
        head: the header timeout ended it (slow headers), or it never sent anything."""


#: Whether :class:`GuardedSite` can build its handlers (an aiohttp this module knows).
GUARDED_SERVER = supported(aiohttp.__version__)


def _describe_bad_request(exc: BaseException | None) -> str:
    """A sentence for a malformed request that never quotes the request (aiohttp's own messages
    quote the offending line: a Cookie or Authorization header with its secrets)."""
    name = type(exc).__name__ if exc is not None else ""
    return {
        "LineTooLong": "A request line or header is longer than the server accepts.",
        "BadHttpMethod": "This is not an HTTP request.",
        "BadStatusLine": "The request line is malformed.",
        "InvalidURLError": "The request line is malformed.",
        "InvalidHeader": "A request header is malformed.",
        "TransferEncodingError": "The request body's chunked encoding is malformed.",
        "ContentLengthError": "The request body is shorter than its Content-Length.",
        "ContentEncodingError": "The request body could not be decoded.",
    }.get(name, "The request is malformed.")


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, admitted by a :class:`ConnectionGate` and answering malformed
    requests quietly. Nothing here runs per read: only on connect, disconnect and bad requests."""

    __slots__ = ("_address", "_gate", "_opened_at", "_preadmitted")
    _address: str
    _gate: ConnectionGate
    _opened_at: float
    #: Set when the site's first-read protocol admitted the connection (at ``_opened_at``).
    _preadmitted: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._preadmitted:
            super().connection_made(transport)
            # The header timeout runs from when the connection opened, not from now.
            close_time = self._opened_at + self._keepalive_timeout
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._next_keepalive_close_time = close_time
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
            return
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        gate = self._gate
        if address and not gate.admit(address):
            self._address = ""
            cast(asyncio.Transport, transport).abort()  # before aiohttp sees it: no task, nothing to clean up but this
            return
        self._address = address
        self._opened_at = self._loop.time()
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        address = self._address
        if address:
            self._address = ""
            self._gate.release(address)
            if self._request_count == 0:  # aiohttp counts the request heads it parsed
                self._gate.no_request(address, self._loop.time() - self._opened_at)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:  # a bug (aiohttp's or ours) outside the app's error middleware: keep the traceback
            return super().handle_error(request, status, exc, message)
        what = _describe_bad_request(exc)
        self._gate.malformed(self._address or str(request.remote), status, type(exc).__name__ if exc else "")
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        body = '{"error":{"code":"invalid_request","message":' + json.dumps(what) + "}}"
        response = web.Response(status=status, text=body, content_type="application/json")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            # After an answer that did not read the request's body, aiohttp reads the rest of it
            # to keep the connection; a body it cannot decode (a Content-Encoding that lies) ends
            # up here as an "Unhandled exception". It is the client's: counted, logged quietly;
            # the answer went out and aiohttp closes the connection.
            self._gate.malformed(self._address or "?", 400, "an unread body that could not be decoded")
            return
        super().log_exception(*args, **kw)


class GuardedSite(web.TCPSite):
    """``TCPSite`` whose connections are :class:`GuardedRequestHandler`\\ s admitted by ``gate``.

    ``handler_args`` must be what the runner was given (keep-alive timeout ...): aiohttp builds
    its handlers from its ``Server``'s arguments, and this site builds its own the same way."""

    __slots__ = ("_gate_", "_handler_args", "_header_timeout", "_loop_", "_takeover")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        gate: ConnectionGate,
        handler_args: dict[str, Any],
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        takeover: Takeover | None = None,
    ) -> None:
        # TCPSite keeps the context (start() hands it to create_server) and names the site https.
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._gate_ = gate
        self._handler_args = handler_args
        self._header_timeout = float(handler_args.get("keepalive_timeout") or 0.0)
        self._takeover = takeover if FAST_FRAMES else None
        self._loop_: asyncio.AbstractEventLoop | None = None

    def _make_handler(self) -> GuardedRequestHandler:
        server = self._runner.server
        assert server is not None
        handler = GuardedRequestHandler(server, loop=asyncio.get_running_loop(), **self._handler_args)
        handler._gate = self._gate_
        handler._address = ""
        handler._preadmitted = False
        return handler

    def _make_protocol(self) -> asyncio.BaseProtocol:
        if self._takeover is None:
            return self._make_handler()
        return _FirstRead(self)

    async def start(self) -> None:
        if not GUARDED_SERVER:
            await super().start()
            return
        # aiohttp 3.14's TCPSite.start, with our handler factory in place of the runner's server.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        # A TLS handshake that stalls is closed after the header timeout too (asyncio's default
        # is 60 s), since the handler below, and so its limits, only start once it is done.
        handshake = self._handler_args.get("keepalive_timeout") if self._ssl_context is not None else None
        self._loop_ = loop
        self._server = await loop.create_server(
            self._make_protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=handshake,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port


# -- connections taken over before aiohttp ---------------------------------------------------------

#: ``hand_over(bytes_unread, since)`` of a :data:`Takeover`.
HandOver = Callable[[bytes, float | None], None]

#: ``takeover(transport, first_bytes, release, hand_over)``: a hook of :class:`GuardedSite` that sees
#: each new connection's first read when it starts with ``GET``, ``POST`` or ``OPTIONS``. It returns True when it
#: took the connection: it installed a protocol of its own on the transport
#: (``transport.set_protocol``) and, when the connection ends, calls ``release()`` once (the
#: connection limit per address); or, later, gives the connection to aiohttp after all with
#: ``hand_over(bytes_unread, since)`` (then not ``release()``: aiohttp's handler releases it; its
#: header timeout runs from ``since``, the loop's time of the connection's last answer, or from now
#: when None). False (nothing touched) gives the bytes to aiohttp as if the
#: hook were not there. It must not raise.
Takeover = Callable[[asyncio.Transport, bytes, Callable[[], None], HandOver], bool]


def _nothing() -> None:
    pass


def _hand_over(
    site: GuardedSite, transport: asyncio.Transport, address: str, data: bytes, opened_at: float | None = None
) -> None:
    """Give an admitted connection to a :class:`GuardedRequestHandler` with the bytes read and not
    parsed; its header timeout runs from ``opened_at`` (None: now)."""
    handler = site._make_handler()
    handler._address = address
    assert site._loop_ is not None
    handler._opened_at = site._loop_.time() if opened_at is None else opened_at
    handler._preadmitted = True
    transport.set_protocol(handler)
    handler.connection_made(transport)
    if data:
        handler.data_received(data)


class _FirstRead(asyncio.Protocol):
    """A guarded site's protocol until a connection's first read: admits it (as
    :class:`GuardedRequestHandler` does), closes it when nothing comes within the header timeout,
    then offers the first read to the site's :data:`Takeover` and, when that declines, hands the
    connection and the bytes to a :class:`GuardedRequestHandler`, which carries on as if it had
    had the connection from the start (its header timeout too)."""

    __slots__ = ("_address", "_opened_at", "_site", "_timer", "_transport")

    def __init__(self, site: GuardedSite) -> None:
        self._site = site
        self._address = ""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        site = self._site
        if address and not site._gate_.admit(address):
            cast(asyncio.Transport, transport).abort()
            return
        self._address = address
        self._transport = cast(asyncio.Transport, transport)
        loop = site._loop_
        assert loop is not None
        self._opened_at = now = loop.time()
        if site._header_timeout > 0:
            self._timer = loop.call_at(now + site._header_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        transport = self._let_go()
        if transport is None:
            return
        site = self._site
        address = self._address
        takeover = site._takeover
        if takeover is not None and data[:1] in b"GPO":  # GET, POST, OPTIONS
            release = functools.partial(site._gate_.release, address) if address else _nothing
            hand_over = functools.partial(_hand_over, site, transport, address)
            try:
                if takeover(transport, data, release, hand_over):
                    return
            except Exception:  # a bug in the hook: this connection is lost, the server goes on
                log.exception("taking over a connection failed")
                transport.abort()
                release()
                return
        _hand_over(site, transport, address, data, self._opened_at)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._let_go() is None:  # handed over (or never admitted): not ours to count
            return
        site = self._site
        if self._address:
            site._gate_.release(self._address)
            assert site._loop_ is not None
            site._gate_.no_request(self._address, site._loop_.time() - self._opened_at)

    def _let_go(self) -> asyncio.Transport | None:
        """The connection, once (None after): its first read or its end, whichever comes."""
        transport, self._transport = self._transport, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return transport

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()  # connection_lost counts it


class _MessageSink(WebSocketDataQueue):  # type: ignore[misc, valid-type]
    """The queue aiohttp's WebSocket reader feeds, handing each message on at once instead."""

    def __init__(
        self, protocol: Any, on_message: Callable[[Any], None], on_error: Callable[[BaseException], None]
    ) -> None:
        super().__init__(protocol, DEFAULT_CHUNK_SIZE, loop=asyncio.get_running_loop())
        self.on_message = on_message
        self.on_error = on_error

    def feed_data(self, data: Any, size: int) -> None:
        self.on_message(data)

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self.on_error(exc)

    def feed_eof(self) -> None:
        pass


class MessageParser:
    """aiohttp's compiled WebSocket reader (client frames: masked, size-limited, UTF-8 checked,
    fragments joined, control frames checked), handing each message to ``on_message`` as a
    ``(WSMsgType, data, extra)`` tuple, as ``WebSocketResponse.receive()`` would return it, and a
    protocol error (``aiohttp.WebSocketError``: ``code``, message) to ``on_error``; after an error
    it reads nothing more. Only with :data:`FAST_FRAMES` (a site takes nothing over otherwise).

    ``decode_text=False``: a text message's data is its bytes, not checked for UTF-8 (the reader's
    own option): for a consumer that checks them itself on the way (msgspec does, as it parses),
    saving the reader's decode."""

    __slots__ = ("_reader", "_sink")

    def __init__(
        self,
        protocol: Any,
        max_msg_size: int,
        on_message: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        *,
        decode_text: bool = True,
    ) -> None:
        self._sink = _MessageSink(protocol, on_message, on_error)
        self._reader = WebSocketReader(self._sink, max_msg_size, compress=False, decode_text=decode_text)

    def feed(self, data: bytes) -> None:
        self._reader.feed_data(data)


#: Headers aiohttp's strict parser refuses twice (RFC 9110's singletons), lower-case; the lean
#: paths leave a request that repeats one to aiohttp's answer. (aiohttp's own set, and the one
#: 3.14 has, should a later one have none.)
SINGLETON_HEADERS: frozenset[str] = frozenset(getattr(_http_parser, "SINGLETON_HEADERS", ())) | {
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "etag",
    "host",
    "max-forwards",
    "server",
    "transfer-encoding",
    "user-agent",
}

try:
    from aiohttp._cookie_helpers import parse_cookie_header as _parse_cookie_header
except ImportError:  # pragma: no cover - an aiohttp without it
    _parse_cookie_header = None  # type: ignore[assignment]


def parse_cookies(header: str) -> Mapping[str, str]:
    """A ``Cookie`` header as ``request.cookies`` reads it (aiohttp's own parser when there is one)."""
    if not header:
        return {}
    if _parse_cookie_header is not None and GUARDED_SERVER:
        return {name: morsel.value for name, morsel in _parse_cookie_header(header)}
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(header)
    except Exception:  # a malformed header reads as no cookies, as aiohttp's did
        return {}
    return {name: morsel.value for name, morsel in cookie.items()}
