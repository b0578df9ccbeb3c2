"""WHIP ingest (RFC 9725): ``POST /whip`` with an SDP offer -> ``201``, ``Location``, SDP answer.

Records by default (``?mode=probe`` or ``?mode=echo`` also work; ``?format=mkv|mp4`` picks the
container, by default the one that takes the codecs as they are; ``?passthrough=false``
transcodes instead of writing the encoded frames as they came). Auth is as for
``POST /rtc/offer``: a peer token (``Authorization: Bearer``) makes that peer the owner; without
one the session is anonymous and its ``Location`` is the capability.

The 201 carries the ICE servers the client may use as ``Link: <url>; rel="ice-server"`` headers
(TURN with credentials, minted when ``--turn-secret`` is set) and an ``ETag`` naming the ICE
session. On the session's ``Location``: ``PATCH`` with ``application/trickle-ice-sdpfrag`` adds
trickled candidates (``204``; ``If-Match`` must be the ``ETag`` or absent, else ``412``); an ICE
restart is ``422`` (aiortc cannot restart ICE: start a new session); ``DELETE`` ends the session.
``OPTIONS /whip`` answers ``204`` with ``Accept-Post: application/sdp``. docs/interop.md lists
every clause of RFC 9725 and what this does with it.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..config import IceServer
from ..errors import InvalidRequest, PreconditionFailed, UnprocessableContent, UnsupportedMediaType
from ..protocol import SessionEnd, Via
from ..web import read_body
from .keys import MEDIA_KEY
from .manager import parse_options
from .routes import caller_of, check_access
from .session import MediaSession

__all__ = ["created", "routes", "sdp_body", "trickle"]

routes = web.RouteTableDef()


def _query_options(query: dict[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in ("format",):
        if key in query:
            out[key] = query[key]
    for key in ("audio", "video", "passthrough", "record"):
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


async def sdp_body(request: web.Request, content_type: str, what: str) -> str:
    if request.content_type != content_type:
        raise UnsupportedMediaType(f"{what} must be sent as {content_type}.")
    try:
        return (await read_body(request)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} must be UTF-8 text.") from exc


@routes.post("/whip")
async def whip_post(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    sdp = await sdp_body(request, "application/sdp", "WHIP offers")
    mode = request.query.get("mode", "record")
    whip_modes = [name for name in manager.modes if manager.modes.info(name).whip]
    if mode not in whip_modes:
        raise InvalidRequest(f"WHIP mode must be one of {', '.join(whip_modes)}.")
    options = parse_options(_query_options(dict(request.query)), manager.config.max_session_seconds)
    caller = await caller_of(request)
    session, answer = await manager.open(
        mode=mode, sdp=sdp, options=options, owner=caller.owner, via=Via.WHIP, address=request.remote
    )
    peer_id = caller.owner.peer_id if caller.owner and caller.owner.peer_id else f"whip-{session.id[:8]}"
    return created(request, session, answer, peer_id)


@routes.options("/whip")
async def whip_options(request: web.Request) -> web.Response:
    """What the WHIP endpoint takes (a CORS preflight with an ``Origin`` is answered before this)."""
    return web.Response(status=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": "application/sdp"})


def ice_server_links(servers: tuple[IceServer, ...]) -> list[str]:
    """RFC 9725, STUN/TURN server configuration: one ``Link`` value per ICE server URL."""
    links = []
    for server in servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += f'; username="{_quoted(server.username)}"; credential="{_quoted(server.credential)}"'
                link += '; credential-type="password"'
            links.append(link)
    return links


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)


def _ufrag(sdp: str) -> str | None:
    found = _UFRAG.search(sdp)
    return found.group(1) if found else None


def _etag(answer: str) -> str:
    """The ICE session's entity tag: the answer's ICE username fragment (new on every restart)."""
    return f'"{_ufrag(answer) or "none"}"'


@routes.patch("/whip/{sessionId}")
async def whip_patch(request: web.Request) -> web.Response:
    """Trickle ICE (RFC 9725): candidates in an SDP fragment; ICE restarts: 422."""
    manager = request.app[MEDIA_KEY]
    owner, session, _ = manager.get(request.match_info["sessionId"])
    check_access(await caller_of(request), owner, "session")
    return await trickle(request, session)


async def trickle(request: web.Request, session: MediaSession | None) -> web.Response:
    """A WHIP or WHEP ``PATCH``: trickled candidates in an SDP fragment (``204``); an ICE
    restart is ``422`` (aiortc cannot restart ICE); ``If-Match`` must name the ICE session."""
    fragment = await sdp_body(request, "application/trickle-ice-sdpfrag", "PATCH bodies")
    pc = session.pc if session is not None else None
    if session is None or pc is None or pc.localDescription is None or pc.remoteDescription is None:
        raise UnprocessableContent("The session has ended; start a new one.")
    etag = _etag(pc.localDescription.sdp)
    if_match = request.headers.get("If-Match")
    ufrag = _ufrag(fragment)
    if if_match == "*" or (ufrag is not None and ufrag != _ufrag(pc.remoteDescription.sdp)):
        raise UnprocessableContent(
            "ICE restarts are not supported (the server's WebRTC stack cannot restart ICE): "
            "DELETE this session and POST a new offer."
        )
    if if_match is not None and if_match != etag:
        raise PreconditionFailed("If-Match does not name this session's ICE session (its ETag).")
    mid: str | None = None  # the bundle's first m= section unless the fragment names one
    for raw in fragment.splitlines():
        line = raw.strip()
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            await session.add_candidate({"candidate": line[len("a=") :], "sdpMid": mid, "sdpMLineIndex": 0})
        elif line == "a=end-of-candidates":
            await session.add_candidate(None)
    return web.Response(status=204, headers={"ETag": etag})


def created(request: web.Request, session: MediaSession, answer: str, peer_id: str) -> web.Response:
    """The ``201`` of WHIP and WHEP: the answer, ``Location`` (relative to where the app is
    mounted), ``ETag`` and the ICE servers as ``Link`` headers."""
    location = f"{request.path.rstrip('/')}/{session.id}"
    headers = [("Location", location), ("X-Session-Id", session.id), ("ETag", _etag(answer))]
    headers += [("Link", link) for link in ice_server_links(request.app[MEDIA_KEY].rtc.ice_servers_for(peer_id))]
    response = web.Response(status=201, text=answer, content_type="application/sdp")
    for name, value in headers:
        response.headers.add(name, value)
    return response


@routes.delete("/whip/{sessionId}")
async def whip_delete(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    owner, session, _ = manager.get(request.match_info["sessionId"])
    check_access(await caller_of(request), owner, "session")
    if session is not None:
        await session.close(SessionEnd.DELETED)
    return web.Response(status=200)
