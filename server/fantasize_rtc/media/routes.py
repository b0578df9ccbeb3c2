"""HTTP routes of the media layer: the modes offered, one-round-trip offers, session reports, recordings.

Who may do what (docs/media.md, "Who may see what"; docs/security.md):

- a session opened with a peer token belongs to the credential that opened it: only a caller
  presenting that same credential (the same token, or under a JWT gate the same authenticated
  identity), or the admin key, reads or ends it and reads, downloads or deletes its recording.
  Another peer that later takes the same peer id has another token and is refused;
- an anonymous session (no token) is reachable by anyone who holds its unguessable ``sessionId``
  (its recording by its id, which contains the session id), and by the admin key. Under a JWT
  gate anonymous sessions are refused unless ``allow_anonymous_media``;
- ``GET /rtc/recordings`` lists the caller's own recordings (a peer token) or all (admin key),
  those being written too (``state: "recording"``, size and duration so far).

A recording being written can be downloaded (what is written so far: a playable prefix, since
its container is written in whole clusters or fragments) and deleted (its session ends first,
reason ``deleted``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from ..errors import Conflict, Forbidden, InvalidRequest, RecordingNotFound, SessionNotFound, Unauthorized
from ..protocol import RecordingState, SessionEnd, Via
from ..web import RTC_KEY, is_admin, json_response, read_json, refuse_admin_key_in_url, token_from_request
from .keys import MEDIA_KEY
from .manager import parse_options
from .recordings import FORMATS, RecordingInfo
from .session import Owner

__all__ = ["Caller", "caller_of", "check_access", "routes"]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the admin, a room member, or nobody in particular (no token)."""

    admin: bool = False
    owner: Owner | None = None


async def caller_of(request: web.Request) -> Caller:
    """No token -> anonymous; a token must be valid (401 otherwise): the admin key (in the
    Authorization header), a peer token, or under a JWT gate a connect JWT."""
    token = token_from_request(request)
    if token is None:
        return Caller()
    if is_admin(request):
        return Caller(admin=True)
    refuse_admin_key_in_url(request)
    room_id, peer_id, key, member = await request.app[RTC_KEY].authenticate_owner(token)
    return Caller(owner=Owner(room_id, peer_id, key, member))


def check_access(caller: Caller, owner: Owner | None, what: str) -> None:
    """Owned things: their owner or the admin. Anonymous things: whoever holds their id."""
    if caller.admin or owner is None:
        return
    if caller.owner is None:
        raise Unauthorized(f"This {what} belongs to a room member: send that peer's token or the admin key.")
    if not caller.owner.may_access(owner):
        raise Forbidden(f"This {what} belongs to another peer (or to an earlier peer of the same id).")


@routes.get("/rtc/media")
async def media_info(request: web.Request) -> web.Response:
    """How clients reach the server's own peers: UDP ports, announced addresses, load."""
    return json_response(request.app[MEDIA_KEY].describe())


@routes.get("/rtc/modes")
async def list_modes(request: web.Request) -> web.Response:
    """The modes sessions can be opened in (built-in and registered): what the demo page offers."""
    return json_response({"modes": request.app[MEDIA_KEY].modes.describe()})


@routes.post("/rtc/offer")
async def offer(request: web.Request) -> web.Response:
    """``{sdp, type: "offer", mode?, roomId?, ...options}`` -> ``{sdp, type: "answer", sessionId}``."""
    manager = request.app[MEDIA_KEY]
    body = await read_json(request)
    if body.get("type", "offer") != "offer":
        raise InvalidRequest("type must be 'offer': the server answers offers, it does not take answers.")
    caller = await caller_of(request)
    room_id = body.get("roomId")
    if room_id is not None:
        if caller.owner is None and not caller.admin:
            raise Unauthorized("roomId needs the peer's token (Authorization: Bearer <token>).")
        if caller.owner is not None and room_id != caller.owner.room_id:
            raise Forbidden(f"This token belongs to room {caller.owner.room_id!r}.")
    mode = body.get("mode", "echo")
    options = parse_options(body, manager.config.max_session_seconds)
    session, answer = await manager.open(
        mode=mode, sdp=body.get("sdp"), options=options, owner=caller.owner, via=Via.HTTP, address=request.remote
    )
    return json_response({"sdp": answer, "type": "answer", "sessionId": session.id})


@routes.get("/rtc/sessions/{sessionId}")
async def get_session(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    owner, session, report = manager.get(request.match_info["sessionId"])
    check_access(await caller_of(request), owner, "session")
    if session is not None and not session.closed:
        await session.refresh_stats()
        report = session.report()
    return json_response(report)


@routes.delete("/rtc/sessions/{sessionId}")
async def delete_session(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    owner, session, _ = manager.get(request.match_info["sessionId"])
    check_access(await caller_of(request), owner, "session")
    if session is not None:
        await session.close(SessionEnd.DELETED)
    return json_response({"closed": True})


@routes.get("/rtc/recordings")
async def list_recordings(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    caller = await caller_of(request)
    if not caller.admin and caller.owner is None:
        raise Unauthorized("Listing recordings needs a peer token (your own) or the admin key (all).")
    items = manager.store.list()
    if not caller.admin:
        assert caller.owner is not None
        mine = caller.owner
        items = [i for i in items if (owner := _owner_of(i)) is not None and mine.may_access(owner)]
    return json_response({"recordings": [i.to_wire() for i in items]})


def _owner_of(info: RecordingInfo) -> Owner | None:
    """A recording's owner. One saved before owner keys existed has none: only the admin gets in."""
    if not (info.room_id and info.peer_id):
        return None
    return Owner(info.room_id, info.peer_id, info.owner_key or "")


@routes.get("/rtc/recordings/{recordingId}")
async def download_recording(request: web.Request) -> web.StreamResponse:
    """The file. While it is written: the bytes written when the request came (the length is
    fixed then), which play up to the last whole cluster or fragment."""
    manager = request.app[MEDIA_KEY]
    info = manager.store.get(request.match_info["recordingId"])
    check_access(await caller_of(request), _owner_of(info), "recording")
    fmt = FORMATS.get(info.format)
    headers = {
        "Content-Type": fmt.content_type if fmt else "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{info.file}"',
        "Cache-Control": "private, no-store",
    }
    return web.FileResponse(manager.store.path_of(info), headers=headers)


@routes.delete("/rtc/recordings/{recordingId}")
async def delete_recording(request: web.Request) -> web.Response:
    manager = request.app[MEDIA_KEY]
    store = manager.store
    info = store.get(request.match_info["recordingId"])
    check_access(await caller_of(request), _owner_of(info), "recording")
    if info.state == RecordingState.RECORDING:
        if store.live(info.id) is None:
            raise Conflict("This recording is being written by another server process; end its session there.")
        try:
            _, session, _ = manager.get(info.session_id)
        except SessionNotFound:
            session = None
        if session is not None:
            await session.close(SessionEnd.DELETED)  # finalizes it (or removes it, if it holds nothing)
        try:
            info = store.get(info.id)
        except RecordingNotFound:
            return json_response({"deleted": True})
    store.delete(info)
    return json_response({"deleted": True})
