"""WHIP ingest (RFC 9725): ``POST /whip`` with an SDP offer -> ``201``, ``Location``, SDP answer.

Records by default (``?mode=probe`` or ``?mode=echo`` also work; ``?format=mkv|mp4`` picks the
container; ``?passthrough=false`` transcodes instead of writing the encoded frames as they came).
``DELETE`` on the ``Location`` ends the session. Auth is as for ``POST /rtc/offer``:
a peer token (``Authorization: Bearer``) makes that peer the owner; without one the session is
anonymous and its ``Location`` is the capability. Trickle ICE (``PATCH``) is not supported:
the server's answer carries all its candidates, so clients simply send a complete offer.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import InvalidRequest, UnsupportedMediaType
from ..protocol import SessionEnd, Via
from ..web import read_body
from .keys import MEDIA_KEY
from .manager import parse_options
from .routes import caller_of, check_access

__all__ = ["routes"]

routes = web.RouteTableDef()

WHIP_MODES = ("record", "probe", "echo")


def _query_options(query: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in ("format",):
        if key in query:
            out[key] = query[key]
    for key in ("audio", "video", "passthrough"):
        if key in query:
            value = query[key].lower()
            if value not in ("true", "false", "1", "0"):
                raise InvalidRequest(f"{key} must be true or false.")
            out[key] = value in ("true", "1")
    if "maxSeconds" in query:
        try:
            out["maxSeconds"] = float(query["maxSeconds"])
        except ValueError as exc:
            raise InvalidRequest("maxSeconds must be a number.") from exc
    return out


@routes.post("/whip")
async def whip_post(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    if request.content_type != "application/sdp":
        raise UnsupportedMediaType("WHIP offers must be sent as application/sdp.")
    try:
        sdp = (await read_body(request)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The SDP must be UTF-8 text.") from exc
    mode = request.query.get("mode", "record")
    if mode not in WHIP_MODES:
        raise InvalidRequest(f"WHIP mode must be one of {', '.join(WHIP_MODES)}.")
    options = parse_options(_query_options(dict(request.query)), manager.config.max_session_seconds)
    caller = await caller_of(request)
    session, answer = await manager.open(
        mode=mode, sdp=sdp, options=options, owner=caller.owner, via=Via.WHIP, address=request.remote
    )
    # relative to where the app is mounted (request.path carries any prefix)
    location = f"{request.path.rstrip('/')}/{session.id}"
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={"Location": location, "X-Session-Id": session.id},
    )


@routes.delete("/whip/{sessionId}")
async def whip_delete(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    owner, session, _ = manager.get(request.match_info["sessionId"])
    check_access(await caller_of(request), owner, "session")
    if session is not None:
        await session.close(SessionEnd.DELETED)
    return web.Response(status=200)
