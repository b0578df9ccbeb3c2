"""What every route of the aiohttp transport (and the media layer's routes) needs from a request:
the app keys, the JSON answer and error shape, the body, the caller's token and the admin key."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http import HttpProcessingError

from .. import _json
from ..auth import COOKIE_PATH, bearer_token, connect_cookie_name, peer_token, token_from_cookies
from ..counters import TransportCounters
from ..errors import InvalidRequest, RequestTimeout, RtcError, Unauthorized, UnsupportedMediaType
from ..protocol import Signal, dumps, require_object, validate_id, validate_signal
from ..server import RtcServer

__all__ = [
    "ADMIN_KEY",
    "COUNTERS_KEY",
    "RTC_KEY",
    "STARTED_KEY",
    "RequestLike",
    "StaleCookie",
    "UndecodableBody",
    "error_response",
    "is_admin",
    "is_secure",
    "json_bytes_response",
    "json_object",
    "json_response",
    "optional_id",
    "peer_from",
    "read_body",
    "read_json",
    "read_json_fast",
    "refuse_admin_key_in_url",
    "require_admin_or_token",
    "require_json_type",
    "signal_of",
    "token_from_request",
]

log = logging.getLogger("fantasize_rtc.web")

RTC_KEY = web.AppKey("rtc", RtcServer)


STARTED_KEY = web.AppKey("started_at", float)


ADMIN_KEY = web.AppKey("admin_key", str)


#: What the transport counts (requests, errors, frames, relay latency): ``metrics.py`` reads it.
COUNTERS_KEY = web.AppKey("counters", TransportCounters)
# Missing content type (curl -d sends form type; fetch with a string sends text/plain) is refused
# on purpose: a cross-site form can send text/plain without a CORS preflight.
_JSON_TYPES = ("application/json",)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return json_bytes_response(dumps(data).encode(), status, headers)


def json_bytes_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer from its bytes (``text=`` would make aiohttp encode it again, slower)."""
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8", headers=headers)


def error_response(err: RtcError) -> web.Response:
    response = json_response(err.to_dict(), status=err.status, headers=err.headers())
    if isinstance(err, StaleCookie):
        response.del_cookie(err.cookie, path=COOKIE_PATH)
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON, 413 when too large, 400 when malformed."""
    return (await read_json_fast(request))[0]


async def read_body(request: web.Request) -> bytes:
    """The request body: 413 over the size limit, 408 when it trickles in slower than the body
    timeout (the connection is then closed), 400 when its Content-Encoding cannot be decoded."""
    if request.content.is_eof():  # all there already (the common case): nothing to wait for
        try:
            return await request.read()
        except (web.RequestPayloadError, HttpProcessingError) as exc:
            raise undecodable(request) from exc
    timeout = request.app[RTC_KEY].config.body_timeout_ms / 1000
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        log.warning("request body from %s on %s did not arrive within %.0f s", request.remote, request.path, timeout)
        raise RequestTimeout(f"The request body did not arrive within {timeout:g} s.") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. gzip on a body that is not gzip
        raise undecodable(request) from exc


def undecodable(request: web.Request) -> UndecodableBody:
    encoding = request.headers.get("Content-Encoding", "")[:32]
    return UndecodableBody(f"The body could not be decoded (Content-Encoding: {encoding!r}).")


class UndecodableBody(InvalidRequest):
    """A body that cannot be read to its end: the answer closes the connection."""


async def read_json_fast(request: web.Request) -> tuple[dict[str, Any], bool]:
    """:func:`read_json`, and whether msgspec read it (:func:`json_object`)."""
    if request.body_exists:
        require_json_type(request.content_type)
    return json_object(await read_body(request), request.app[RTC_KEY].config.max_json_depth)


def require_json_type(ctype: str) -> None:
    """415 unless ``ctype`` (a media type, lowercase, without parameters) is JSON."""
    if ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")


def json_object(data: bytes, max_depth: int) -> tuple[dict[str, Any], bool]:
    """A body as a JSON object, and whether msgspec read it (its strings can be written back by
    msgspec as they were); 400 when empty, malformed, too deep or not an object."""
    if not data:
        raise InvalidRequest("The body must be a JSON object.")
    body, fast = _json.parse(data, max_depth=max_depth)
    return require_object(body), fast


def signal_of(value: Any, fast: bool, max_depth: int) -> Signal:
    """Validate a client's signal; its payload is kept as JSON text, written back by msgspec when
    msgspec read it, so the relay does not encode an SDP (most of a message) on the way out."""
    payload_json = _json.encode(value["payload"], fast) if type(value) is dict and "payload" in value else None
    return validate_signal(value, max_depth=max_depth, payload_json=payload_json)


class RequestLike(Protocol):
    """What the WebSocket's admission reads of a request: aiohttp's, or the lean upgrade's
    (``web._lean``), which parses nothing else."""

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def host(self) -> str: ...

    @property
    def secure(self) -> bool: ...


def token_from_request(request: RequestLike, room_id: str | None = None, peer_id: str | None = None) -> str | None:
    """Bearer header, then ``?token=``, then the connect cookie for (room, peer)."""
    authorization = request.headers.get("Authorization")
    if authorization is None:
        if token := request.query.get("token"):
            return token
    elif (token := bearer_token(authorization)) is not None:
        return token  # (the cookies are not read at all: parsing them costs every request)
    return peer_token(authorization, request.cookies, room_id, peer_id)


def is_secure(request: RequestLike) -> bool:
    """HTTPS, here or at a proxy in front. ``request.secure`` is the client's scheme: TLS here, or
    the last ``X-Forwarded-Proto`` of a trusted proxy (``--trusted-proxy``: the proxy middleware
    hands the routes a request with that scheme). ``X-Forwarded-Proto: https`` from anyone else is
    believed too, for this flag only: it only ever makes the cookie stricter (a Secure cookie is
    not sent back over plain HTTP), so it needs no trust."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def optional_id(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    return None if value is None else validate_id(value, field)


async def peer_from(rtc: RtcServer, request: RequestLike, body: dict[str, Any], peer_field: str) -> tuple[str, str]:
    """Authenticate the caller; the ids in the body, when present, must be the token's."""
    room_id = optional_id(body, "roomId")
    peer_id = optional_id(body, peer_field)
    token = token_from_request(request, room_id, peer_id)
    try:
        return await rtc.authorize(token, room_id, peer_id)
    except Unauthorized as err:
        if room_id and token is not None and token == token_from_cookies(request.cookies, room_id, peer_id or ""):
            raise StaleCookie(err.message, connect_cookie_name(room_id)) from None  # its peer left or was reaped
        raise


class StaleCookie(Unauthorized):
    """A connect cookie whose peer is gone: the 401 also clears it."""

    def __init__(self, message: str, cookie: str) -> None:
        super().__init__(message)
        self.cookie = cookie


def _is_key(request: web.Request, given: str | None) -> bool:
    key = request.app.get(ADMIN_KEY)
    return bool(key and given and hmac.compare_digest(key.encode(), given.encode()))


def is_admin(request: web.Request) -> bool:
    """The caller sent the admin key, in the Authorization header (never taken from the URL:
    URLs end up in proxy and access logs, and the key does not expire)."""
    return _is_key(request, bearer_token(request.headers.get("Authorization")))


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
