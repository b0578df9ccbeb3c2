"""The HTTP routes of docs/protocol.md: connect, heartbeat, signal, disconnect, snapshot, long-poll,
health, and the demo page."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import _json
from .._resources import static_dir
from .._version import __version__
from ..auth import (
    COOKIE_MAX_AGE,
    COOKIE_PATH,
    connect_cookie_name,
    connect_cookie_value,
    looks_like_jwt,
    stale_cookies,
    token_from_cookies,
)
from ..errors import Draining, Forbidden, InvalidRequest
from ..protocol import LeaveReason, validate_id
from ..server import RtcServer
from ._requests import (
    RTC_KEY,
    STARTED_KEY,
    RequestLike,
    is_secure,
    json_bytes_response,
    json_response,
    optional_id,
    peer_from,
    read_json_fast,
    require_admin_or_token,
    signal_of,
    token_from_request,
)

__all__ = ["JSON_POSTS", "JsonPost", "index", "routes"]

log = logging.getLogger("fantasize_rtc.web")

routes = web.RouteTableDef()


# -- the JSON POSTs: each an answer from the caller's request and body, served by aiohttp's routes
# below and, under `fantasize-rtc serve`, by the lean path for keep-alive connections (web._lean_http)


async def connect_answer(rtc: RtcServer, request: RequestLike, body: dict[str, Any], fast: bool) -> web.Response:
    room_id = validate_id(body.get("roomId"), "roomId")
    peer_id = optional_id(body, "peerId")
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
        secure=is_secure(request),
    )
    for stale in stale_cookies(request.cookies, keep=name):
        response.del_cookie(stale, path=COOKIE_PATH)
    return response


async def heartbeat_answer(rtc: RtcServer, request: RequestLike, body: dict[str, Any], fast: bool) -> web.Response:
    room_id, peer_id = await peer_from(rtc, request, body, "peerId")
    last_seen = await rtc.heartbeat(room_id, peer_id)
    return json_response({"lastSeen": last_seen})


async def signal_answer(rtc: RtcServer, request: RequestLike, body: dict[str, Any], fast: bool) -> web.Response:
    room_id, peer_id = await peer_from(rtc, request, body, "fromPeerId")
    if "signal" not in body:
        raise InvalidRequest("signal is required: {type, payload, to?}.")
    result = await rtc.relay(room_id, peer_id, signal_of(body["signal"], fast, rtc.config.max_json_depth))
    return json_bytes_response(_json.encode_bytes(result.to_wire()))


async def disconnect_answer(rtc: RtcServer, request: RequestLike, body: dict[str, Any], fast: bool) -> web.Response:
    room_id, peer_id = await peer_from(rtc, request, body, "peerId")
    await rtc.disconnect_peer(room_id, peer_id, LeaveReason.LEFT)
    response = json_response({"disconnected": True})
    if token_from_cookies(request.cookies, room_id, peer_id) is not None:
        response.del_cookie(connect_cookie_name(room_id), path=COOKIE_PATH)
    return response


#: An answer to a JSON POST: ``(facade, request, body object, whether msgspec read it)``.
JsonPost = Callable[[RtcServer, RequestLike, dict[str, Any], bool], Awaitable[web.Response]]

#: The JSON POST routes by path.
JSON_POSTS: dict[str, JsonPost] = {
    "/rtc/connect": connect_answer,
    "/rtc/heartbeat": heartbeat_answer,
    "/rtc/signal": signal_answer,
    "/rtc/disconnect": disconnect_answer,
}


def _json_post_route(answer: JsonPost) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        body, fast = await read_json_fast(request)
        return await answer(request.app[RTC_KEY], request, body, fast)

    route.__name__ = route.__qualname__ = answer.__name__.removesuffix("_answer")
    return route


for _path, _answer in JSON_POSTS.items():
    routes.post(_path)(_json_post_route(_answer))


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
    if rtc.draining:  # a new delivery channel belongs on a process that stays (web._drain)
        raise Draining()
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


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    rtc = request.app[RTC_KEY]
    health = rtc.backend.health()
    ok = health.get("ok", True)
    # Draining first: load balancers must stop sending here at once, whatever the backend says.
    status = "draining" if rtc.draining else "ok" if ok else "degraded"
    return json_response(
        {
            "status": status,
            "version": __version__,
            "uptimeMs": int((time.monotonic() - request.app[STARTED_KEY]) * 1000),
            **(await rtc.stats()),
            "backend": health,
        },
        status=200 if status == "ok" else 503,
        headers={"Retry-After": str(Draining().retry_after)} if rtc.draining else None,
    )


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})
