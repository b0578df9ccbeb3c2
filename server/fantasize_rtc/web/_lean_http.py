"""Keep-alive JSON POSTs without aiohttp's request machinery, under ``fantasize-rtc serve``.

``POST /rtc/signal`` (and connect, heartbeat, disconnect) is a few microseconds of our work inside
about seventy of aiohttp's: a request object, the middleware chain, a response with its writer,
a handler task per request and a keep-alive task per connection (BENCHMARKS.md, "HTTP signal").
The lean WebSocket upgrade (``web._lean``) showed the way; this is the same for plain requests:

- :class:`LeanPosts` is offered each new connection whose first read starts with ``POST`` or
  ``OPTIONS`` (by :class:`~._lean.LeanUpgrades`, the guarded site's takeover). It takes it when
  the read begins with the whole head of a plain JSON POST to one of :data:`~._routes.JSON_POSTS`
  (request line and headers parsed strictly, a ``Content-Length`` body), or with ``--cors-origin``
  its CORS preflight, and leaves anything else to aiohttp untouched;
- :class:`LeanConnection` serves such requests, one after another as they come (pipelined ones in
  order, a body that comes over several reads waited for), for as long as they are plain. The
  first that is not (another route, a chunked or encoded body, ``Expect``, a head split over
  reads, HTTP/1.0, anything odd) gives the connection to aiohttp with the bytes unread
  (``hand_over``): aiohttp parses and answers it as if it had had the connection all along, and
  keeps it;
- the answers are the routes' own (:data:`~._routes.JSON_POSTS`: same authentication, validation,
  errors and cookies), with what the middlewares add (the JSON error shape, CORS headers and
  preflights, counts, the drain's count, the client's address in log lines, the client's address
  and scheme from a trusted proxy), written as HTTP/1.1 with ``Content-Length`` and ``Date``;
- a connection idle for the header timeout after its last answer is closed, as aiohttp's
  keep-alive timer does; a body not all there within the body timeout is answered ``408`` and the
  connection closed, as ``read_body`` does; at shutdown connections are closed, busy ones after
  their answer.

The helpers for the lean upgrade (the strict head parser, the request the routes read, the
answer's bytes) live here too.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .. import logs
from .._aiohttp_compat import SINGLETON_HEADERS, HandOver, parse_cookies, start_eagerly
from ..errors import RequestTimeout, RtcError
from ..server import RtcServer
from ._drain import Drain
from ._middleware import cors_allows, cors_headers, preflight_answer
from ._proxy import TrustedProxies
from ._requests import error_response, json_object, json_response, require_json_type
from ._routes import JSON_POSTS, JsonPost

__all__ = [
    "HEADER_LINES",
    "LeanConnection",
    "LeanPosts",
    "LeanRequest",
    "Post",
    "encode_answer",
    "parse_head",
    "parse_post",
    "peer_of",
]

log = logging.getLogger("fantasize_rtc.web")

# -- request heads -----------------------------------------------------------------------------

#: Header lines (a token, a colon, printable ASCII: RFC 9110's field-value without obs-text).
HEADER_LINES = r"((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*)*)"
#: aiohttp's limits (its parser refuses longer heads; the lean paths leave them to it).
_MAX_HEAD = 8190
_MAX_HEADERS = 128

_POST_HEAD = re.compile(
    r"(POST|OPTIONS) (" + "|".join(re.escape(path) for path in JSON_POSTS) + r")(\?[!-~]*)? HTTP/1\.1" + HEADER_LINES
)
#: Headers a plain POST carries once, and those it does not carry at all (aiohttp's to judge).
_POST_ONCE = ("host", "content-length")  # (and no singleton twice: parse_head)
_POST_NEVER = ("transfer-encoding", "content-encoding", "expect", "upgrade")
_MAX_LENGTH_DIGITS = 10


def parse_head(data: bytes, pattern: re.Pattern[str]) -> tuple[re.Match[str], CIMultiDict[str], int] | None:
    """(the match of ``pattern``, the headers, where the body begins) when ``data`` begins with a
    whole request head that ``pattern`` (ending in :data:`HEADER_LINES`) matches; else None."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
    if end < 0:
        return None
    try:
        head = pattern.fullmatch(data[:end].decode("ascii"))
    except UnicodeDecodeError:
        return None
    if head is None:
        return None
    lines = head[head.lastindex or 0].split("\r\n")
    if len(lines) > _MAX_HEADERS + 1:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name in headers and name.lower() in SINGLETON_HEADERS:
            return None  # aiohttp refuses it
        headers.add(name, value.strip(" \t"))
    return head, headers, end + 4


class Post(NamedTuple):
    """A plain JSON POST (or its CORS preflight) at the start of the bytes read."""

    preflight: bool  # an OPTIONS with Access-Control-Request-Method (no body)
    path: str
    target: str  # the path and the query
    headers: CIMultiDict[str]
    body: bytes | None  # None: its head is all there, not all of its body yet
    end: int  # where the next request begins
    close: bool  # the client asked to close after the answer


def parse_post(data: bytes, max_body: int, *, preflights: bool = False) -> Post | None:
    """The request ``data`` begins with when it is a plain JSON POST of
    :data:`~._routes.JSON_POSTS` whose head is all there (its body may still be coming: ``body``
    is None then), or with ``preflights`` its CORS preflight; None for anything else."""
    parsed = parse_head(data, _POST_HEAD)
    if parsed is None:
        return None
    head, headers, start = parsed
    preflight = head[1] == "OPTIONS"
    if preflight:
        if not preflights or "access-control-request-method" not in headers:
            return None
        if "content-length" not in headers:
            headers.add("Content-Length", "0")
        elif headers.getone("content-length") != "0":
            return None
    for name in _POST_ONCE:
        if len(headers.getall(name, ())) != 1:
            return None
    for name in _POST_NEVER:
        if name in headers:
            return None
    length = headers["content-length"]
    if not (length.isascii() and length.isdigit()) or len(length) > _MAX_LENGTH_DIGITS:
        return None
    end = start + int(length)
    if end - start > max_body:
        return None  # aiohttp answers 413
    close = False
    connection = headers.getall("connection", ())
    if connection:
        if len(connection) > 1:
            return None
        tokens = {token.strip().lower() for token in connection[0].split(",")}
        if not tokens <= {"keep-alive", "close"}:
            return None
        close = "close" in tokens
    body = data[start:end] if end <= len(data) else None
    return Post(preflight, head[2], head[2] + (head[3] or ""), headers, body, end, close)


class LeanRequest:
    """What the routes read of a request (``RequestLike``), from a parsed head."""

    __slots__ = ("_cookies", "headers", "query", "remote", "secure")

    def __init__(self, target: str, headers: CIMultiDict[str], remote: str, secure: bool) -> None:
        path, _, query = target.partition("?")
        self.query = URL.build(path=path, query_string=query, encoded=True).query if query else _NO_QUERY
        self.headers = headers
        self.remote = remote
        self.secure = secure
        self._cookies: Mapping[str, str] | None = None

    @classmethod
    def on(
        cls, peer: tuple[str, bool], target: str, headers: CIMultiDict[str], proxies: TrustedProxies | None
    ) -> LeanRequest:
        """The request of ``headers`` from ``peer`` (:func:`peer_of` its connection): the client's
        address and scheme (a trusted proxy's ``X-Forwarded-For`` and ``-Proto`` when it came
        through one, as ``web._proxy`` reads them)."""
        remote, secure = peer
        if proxies is not None and remote and proxies.trusts_peer(remote):
            remote = proxies.client_address(headers.getall("X-Forwarded-For", ())) or remote
            scheme = proxies.scheme(headers.getall("X-Forwarded-Proto", ()))
            if scheme is not None:
                secure = scheme == "https"
        return cls(target, headers, remote, secure)

    @property
    def host(self) -> str:
        return self.headers["Host"]

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get("Cookie", ""))
        return self._cookies


_NO_QUERY = URL("/").query


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, bool]:
    """The address at the other end of ``transport``, and whether it is TLS."""
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else "", transport.get_extra_info("sslcontext") is not None


# -- answers -----------------------------------------------------------------------------------

_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header's value, made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def encode_answer(response: web.Response, origin: str | None, *, close: bool) -> bytes:
    """``response`` (a route's answer, or an error's) as HTTP/1.1 bytes: its headers and cookies,
    CORS headers for ``origin`` (when given: the caller checked it is allowed), and ``Connection:
    close`` when the connection closes after it."""
    body = response.body if isinstance(response.body, bytes) else b""
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines += [f"Set-Cookie: {morsel.OutputString()}" for morsel in response.cookies.values()]
    if origin is not None:
        lines += [f"{name}: {value}" for name, value in cors_headers(origin).items()]
    if response.status != 204:  # (RFC 9110: a 204 has no Content-Length)
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {_http_date()}")
    if close:
        lines.append("Connection: close")
    lines += ["", ""]
    return "\r\n".join(lines).encode("latin-1") + body


# -- the connections ---------------------------------------------------------------------------


class LeanPosts:
    """Keep-alive connections of JSON POSTs for one app (``LeanUpgrades.posts``)."""

    def __init__(
        self,
        rtc: RtcServer,
        *,
        counters: Any,
        drain: Drain,
        cors: tuple[str, ...],
        proxies: TrustedProxies | None,
        max_body: int,
        idle_timeout: float,
    ) -> None:
        self.rtc = rtc
        self._counters = counters
        self._drain = drain
        self._cors = cors
        self._proxies = proxies
        self._max_body = max_body
        self.idle_timeout = idle_timeout
        self.body_timeout = rtc.config.body_timeout_ms / 1000
        self._preflights = bool(cors)  # (without CORS a preflight is aiohttp's: 405)
        self._max_depth = rtc.config.max_json_depth
        self._immediate = rtc.backend.immediate
        #: Open connections this path serves (closed at shutdown).
        self.connections: set[LeanConnection] = set()
        #: Requests answered here.
        self.answered = 0

    def start(self, answer: Coroutine[Any, Any, None]) -> asyncio.Future[Any] | None:
        """Run an answer: at once, in the read callback, when the backend never waits (None when
        it is done, else the task that finishes it); as a task otherwise (a Redis client's
        timeouts need one, as in ``LeanUpgrades``)."""
        return start_eagerly(answer) if self._immediate else asyncio.ensure_future(answer)

    def take(
        self,
        transport: asyncio.Transport,
        data: bytes,
        release: Callable[[], None],
        hand_over: HandOver,
    ) -> bool:
        """The takeover for a first read that starts with ``POST``: True when it took it."""
        if parse_post(data, self._max_body, preflights=self._preflights) is None:
            return False
        connection = LeanConnection(self, transport, release, hand_over)
        transport.set_protocol(connection)
        self.connections.add(connection)
        connection.data_received(data)
        return True

    def too_slow(self, connection: LeanConnection, post: Post) -> None:
        """``post``'s body did not arrive within the body timeout: 408, and the connection closes
        (what ``read_body`` answers on aiohttp's side)."""
        log.warning(
            "request body from %s on %s did not arrive within %.0f s", connection.peer[0], post.path, self.body_timeout
        )
        err = RequestTimeout(f"The request body did not arrive within {self.body_timeout:g} s.")
        self.send(connection, post, error_response(err), err.code, close=True)

    def close_all(self) -> None:
        """Close the connections now, those with an answer on its way after it (at shutdown)."""
        for connection in list(self.connections):
            connection.close_when_idle()

    async def answer(self, connection: LeanConnection, post: Post) -> None:
        """Answer ``post`` (all of it here) on ``connection`` (run in the connection's context)."""
        preflight, path, target, headers, body, _, close = post
        assert body is not None
        if preflight:  # (as the CORS middleware answers it: not counted, no drain count)
            origin = headers.get("Origin")
            allowed = cors_allows(self._cors, origin)
            response = preflight_answer(allowed)
            self.answered += 1
            connection.write(encode_answer(response, origin if allowed else None, close=close), close)
            return
        counting = self._drain.request_started()
        code: str | None = None
        try:
            request = LeanRequest.on(connection.peer, target, headers, self._proxies)
            logs.bind(address=request.remote)
            response = await self._respond(JSON_POSTS[path], request, headers, body)
        except RtcError as err:
            response = error_response(err)
            code = err.code
        except Exception:
            log.exception("unhandled error on POST %s", path)
            response = json_response({"error": {"code": "internal_error", "message": "Internal server error."}}, 500)
            code = "internal_error"
            close = True
        finally:
            if counting:
                self._drain.request_ended()
        self.send(connection, post, response, code, close=close)

    def send(
        self, connection: LeanConnection, post: Post, response: web.Response, code: str | None, *, close: bool
    ) -> None:
        """Count ``response`` (the answer to ``post``; ``code`` its error's) and send it."""
        self._counters.answered(post.path, "POST", response.status, code)
        self.answered += 1
        origin = post.headers.get("Origin")
        allowed = origin if cors_allows(self._cors, origin) else None
        connection.write(encode_answer(response, allowed, close=close), close)

    async def _respond(
        self, answer: JsonPost, request: LeanRequest, headers: CIMultiDict[str], data: bytes
    ) -> web.Response:
        if data:  # (an empty body is answered as aiohttp's route does: no type check, 400)
            require_json_type(headers.get("Content-Type", "application/octet-stream").partition(";")[0].strip().lower())
        body, fast = json_object(data, self._max_depth)
        return await answer(self.rtc, request, body, fast)


class LeanConnection(asyncio.Protocol):
    """A keep-alive connection of plain JSON POSTs (:class:`LeanPosts`), until it ends or a
    request comes that is not (then aiohttp's, with the bytes unread).

    Its states: idle (closed after the idle timeout), a body coming (answered ``408`` and closed
    when it is not all there within the body timeout, as ``read_body`` does), an answer waiting
    (on a store: the requests after it wait too). One timer, re-armed lazily, serves both timeouts."""

    __slots__ = (
        "_close_after",
        "_context",
        "_hand_over",
        "_have",
        "_partial",
        "_pieces",
        "_posts",
        "_read_paused",
        "_release",
        "_rest",
        "_since",
        "_timer",
        "_waiting",
        "_write_paused",
        "peer",
        "transport",
    )

    def __init__(
        self,
        posts: LeanPosts,
        transport: asyncio.Transport,
        release: Callable[[], None],
        hand_over: HandOver,
    ) -> None:
        self._posts = posts
        self.transport: asyncio.Transport | None = transport
        self.peer = peer_of(transport)
        self._release: Callable[[], None] | None = release
        self._hand_over: HandOver | None = hand_over
        # One context for the connection's requests, as aiohttp's handler task has one: the log
        # fields each binds are its own, and tasks it starts inherit them.
        self._context = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None  # an answer that waits (on a store)
        self._rest = b""  # what came while an answer waits
        self._partial: Post | None = None  # a request whose body is still coming
        self._pieces: list[bytes] = []  # its bytes so far (joined once, not on every read)
        self._have = 0  # their length
        self._read_paused = False
        self._write_paused = False
        self._close_after = False
        # when the connection went idle (its last answer), or the partial request began
        self._since = asyncio.get_running_loop().time()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._waiting is not None:
            self._rest += data
        elif self._partial is not None:
            self._pieces.append(data)
            self._have += len(data)
            if self._have >= self._partial.end:
                self._partial = None
                pieces, self._pieces, self._have = self._pieces, [], 0
                self._serve(b"".join(pieces))
        else:  # idle since the last answer
            self._serve(data, self._since)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def pause_writing(self) -> None:
        self._write_paused = True  # (a client that does not read its answers is not read either)
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._waiting is None:
            self._resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end()
        release, self._release = self._release, None
        if release is not None:
            release()

    # -- requests --------------------------------------------------------------------------

    def _serve(self, data: bytes, since: float | None = None) -> None:
        """Answer the requests ``data`` begins with, in order; wait for the rest of a body; hand
        anything else to aiohttp (its header timeout running from ``since``, the last answer's
        time, when that was the last thing this connection did; else from now)."""
        posts = self._posts
        while data:
            parsed = parse_post(data, posts._max_body, preflights=posts._preflights)
            if parsed is None:
                self._to_aiohttp(data, since)
                return
            if parsed.body is None:  # its body is on the way
                self._partial = parsed
                self._pieces = [data]
                self._have = len(data)
                self._arm(posts.body_timeout)
                return
            since = None  # an answer now: the next request's head is timed from here
            waiting = self._context.run(posts.start, posts.answer(self, parsed))
            data = data[parsed.end :]
            if self.transport is None or self.transport.is_closing():
                return
            if waiting is not None:  # the rest waits for it (answers go out in order)
                self._close_after = self._close_after or parsed.close
                self._waiting = waiting
                self._rest = data
                self._pause_reading()
                waiting.add_done_callback(self._answered)
                return
        self._idle()

    def _answered(self, waiting: asyncio.Future[Any]) -> None:
        self._waiting = None
        if not waiting.cancelled() and (exc := waiting.exception()) is not None:  # never expected
            log.error("a lean request failed", exc_info=exc)
            if self.transport is not None:
                self.transport.abort()
        if self.transport is None:
            return
        if self._close_after:
            self.transport.close()
            return
        if not self._write_paused:
            self._resume_reading()
        rest, self._rest = self._rest, b""
        if rest:
            self._serve(rest)
        else:
            self._idle()

    def write(self, answer: bytes, close: bool) -> None:
        """Send an answer (and close after it)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if close:
            transport.close()

    # -- timeouts and the connection's end ---------------------------------------------------------

    def _idle(self) -> None:
        """Nothing left to answer: close now if asked to, else after the idle timeout."""
        if self.transport is None:
            return
        if self._close_after:
            self.transport.close()
            return
        self._arm(self._posts.idle_timeout)

    def _arm(self, timeout: float) -> None:
        """Start the state's clock: the timer fires at ``timeout`` from now (or earlier, for an
        earlier state, and then re-arms itself for the rest)."""
        loop = asyncio.get_running_loop()
        self._since = now = loop.time()
        timer = self._timer
        if timer is not None and timer.when() <= now + timeout:
            return  # (one timer per timeout, not one per request)
        if timer is not None:
            timer.cancel()
        self._timer = loop.call_at(now + timeout, self._tick)

    def _tick(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        if self._waiting is not None:  # busy: the next state starts the clock again
            return
        partial = self._partial
        deadline = self._since + (self._posts.body_timeout if partial is not None else self._posts.idle_timeout)
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._tick)
        elif partial is None:
            transport.close()
        else:
            self._partial = None
            self._pieces, self._have = [], 0
            self._posts.too_slow(self, partial)

    def close_when_idle(self) -> None:
        """Close after the answer on its way, or now (a body still coming is not waited for)."""
        self._close_after = True
        if self._waiting is None and self.transport is not None:
            self.transport.close()

    def _to_aiohttp(self, data: bytes, since: float | None) -> None:
        """aiohttp takes the connection from here on, with ``data`` (not read by it yet)."""
        hand_over = self._hand_over
        self._release = None  # aiohttp's handler releases the connection now
        self._resume_reading()
        self._end()
        if hand_over is not None:
            hand_over(data, since)

    def _end(self) -> None:
        self._posts.connections.discard(self)
        self.transport = None
        self._hand_over = None
        self._partial = None
        self._rest = b""
        self._pieces, self._have = [], 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
