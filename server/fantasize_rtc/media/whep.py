"""WHEP playback: ``POST /whep/{sessionId}`` with an SDP offer lets a viewer watch a live WHIP
session (one published in the ``sfu`` mode: ``POST /whip?mode=sfu``), forwarded as it is.

Many viewers may watch one publisher; each is a media session of its own (``via: "whep"``,
mode ``whep``) that gets the publisher's encoded frames without transcoding (:mod:`.sfu`). The
``201`` carries the answer, ``Location: /whep/{sessionId}/{viewerId}``, an ``ETag`` and the ICE
servers as ``Link`` headers, as WHIP's does; on the ``Location``: ``PATCH`` trickles candidates,
``DELETE`` ends the viewer. When the publisher goes, every viewer's session ends
(``publisher_gone``): its peer connection closes.

Access is as for the publisher's session: its owner's peer token, the admin key, or (for an
anonymous WHIP session) the unguessable session id itself. docs/interop.md, "WHEP".
"""

from __future__ import annotations

from aiohttp import web

from ..errors import Conflict, SessionNotFound
from ..protocol import SessionEnd, Via
from .keys import MEDIA_KEY
from .manager import parse_options
from .routes import caller_of, check_access
from .session import MediaSession
from .sfu import WhepViewerMode, publisher_of
from .whip import created, sdp_body, trickle

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/whep/{sessionId}")
async def whep_post(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    owner, publisher, _ = manager.get(request.match_info["sessionId"])
    caller = await caller_of(request)
    check_access(caller, owner, "session")
    if publisher is None or publisher.closed:
        raise SessionNotFound("That session has ended: there is nothing to watch.")
    group = publisher_of(publisher)
    if group is None:
        raise Conflict(
            f"Session {publisher.id[:8]}... is in the {publisher.mode.name} mode, which forwards nothing: "
            "publish with POST /whip?mode=sfu to watch it over WHEP."
        )
    if not group.publications:
        raise Conflict("The publisher is not sending yet (its session has not connected); try again in a moment.")
    sdp = await sdp_body(request, "application/sdp", "WHEP offers")
    viewer, answer = await manager.open(
        mode=WhepViewerMode(group),
        sdp=sdp,
        options=parse_options({}, manager.config.max_session_seconds),
        owner=caller.owner,
        via=Via.WHEP,
        address=request.remote,
    )
    peer_id = caller.owner.peer_id if caller.owner and caller.owner.peer_id else f"whep-{viewer.id[:8]}"
    return created(request, viewer, answer, peer_id)


@routes.options("/whep/{sessionId}")
async def whep_options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Allow": "OPTIONS, POST", "Accept-Post": "application/sdp"})


async def _viewer(request: web.Request) -> MediaSession | None:
    """The live viewer the URL names (None once it ended); 404 when it is no viewer of that session."""
    owner, viewer, report = request.app[MEDIA_KEY].get(request.match_info["viewerId"])
    watched = (report.get("forwarding") or {}).get("group")
    if report.get("via") != Via.WHEP or watched != request.match_info["sessionId"]:
        raise SessionNotFound("No such viewer of that session.")
    check_access(await caller_of(request), owner, "session")
    return viewer


@routes.patch("/whep/{sessionId}/{viewerId}")
async def whep_patch(request: web.Request) -> web.Response:
    return await trickle(request, await _viewer(request))


@routes.delete("/whep/{sessionId}/{viewerId}")
async def whep_delete(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    if viewer is not None:
        await viewer.close(SessionEnd.DELETED)
    return web.Response(status=200)
