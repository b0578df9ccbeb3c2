"""The transport's middleware: every error becomes ``{"error": {code, message}}`` with its status
(never a traceback), bodies a handler did not read are settled, and CORS when it is configured."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import logs
from ..errors import (
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
from ._drain import Drain
from ._requests import COUNTERS_KEY, UndecodableBody, error_response, json_response

__all__ = ["cors_allows", "cors_headers", "cors_middleware", "error_middleware", "preflight_answer"]

log = logging.getLogger("fantasize_rtc.web")

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


def error_middleware(drain: Drain) -> Any:
    """Every error to ``{"error": {code, message}}`` with its status, unread bodies settled, the
    client named in the request's log lines, and the request counted for ``drain``: the requests
    in progress when a drain begins are let finish before the process stops listening
    (``web._drain``; a WebSocket counts for as long as it is open). One middleware for all of it:
    each layer costs every request a coroutine (and aiohttp adds one of its own when there is any).
    The proxy and CORS middlewares around it only wrap the handler, so counting here counts the
    whole request."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        counted = drain.request_started()
        # Log lines of this request (and of the tasks it starts) name the client (logs.py).
        token = logs.bind(address=request.remote)
        try:
            return await _answer(request, handler)
        finally:
            logs.reset(token)
            if counted:
                drain.request_ended()

    return middleware


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    drain = True  # the rest of an unread body is worth reading (keeps the connection)
    code: str | None = None  # the error answered, for the counts
    try:
        response = await handler(request)
    except RtcError as err:
        response = error_response(err)
        code = err.code
        drain = not isinstance(err, (RequestTimeout, UndecodableBody))
    except web.HTTPException as exc:
        if exc.status < 400:
            _count(request, exc.status, None)
            raise
        cls = _HTTP_CODES.get(exc.status, InvalidRequest)
        error = cls(exc.reason + ".")
        code = error.code
        response = json_response(error.to_dict(), status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = json_response({"error": {"code": "internal_error", "message": "Internal server error."}}, status=500)
        code = "internal_error"
        drain = False
    _count(request, response.status, code)
    if request.body_exists and not request.content.is_eof():
        await _finish_unread_body(request, response, drain)
    return response


def _count(request: web.Request, status: int, code: str | None) -> None:
    counters = request.app.get(COUNTERS_KEY)
    if counters is not None:
        resource = request.match_info.route.resource
        counters.answered(resource.canonical if resource is not None else "unmatched", request.method, status, code)


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
            response: web.StreamResponse = preflight_answer(ok)
            if not ok:
                return response
        else:
            response = await handler(request)
        if ok and origin is not None:
            response.headers.update(cors_headers(origin))
        return response

    return middleware


def preflight_answer(allowed: bool) -> web.Response:
    """The answer to a CORS preflight from an origin ``--cors-origin`` allows (or not: 403), less
    :func:`cors_headers`, which the caller adds."""
    if not allowed:
        return json_response(Forbidden("Origin not allowed.").to_dict(), status=403)
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-Match"
    response.headers["Access-Control-Max-Age"] = "600"
    return response


def cors_allows(origins: tuple[str, ...], origin: str | None) -> bool:
    """Whether an answer to ``origin`` carries :func:`cors_headers` (``--cors-origin`` lists it)."""
    return origin is not None and bool(origins) and ("*" in origins or origin in origins)


def cors_headers(origin: str) -> dict[str, str]:
    """What an answer to an allowed origin carries (here, and on the lean upgrade's refusals)."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "Location, Retry-After, Link, ETag, Accept-Post",
        "Vary": "Origin",
    }
