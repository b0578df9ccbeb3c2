"""Group calls through the server, for Python clients: publish and subscribe without SDP handling.

::

    pc = RTCPeerConnection()
    pc.addTrack(my_camera_track)
    call = GroupCall(client, pc)          # client: a connected RtcClient
    await call.join()                     # offers what pc sends to @sfu

    @pc.on("track")
    def on_track(track):
        print("receiving", call.who(track))   # {"peerId": "bob", "kind": "video", ...}

    async for message in client.messages():
        if await call.handle(message):    # the server's offers and answers, errors from @sfu
            continue
        ...                               # everything else is yours

The server forwards what ``pc`` sends to the room's other members and adds their tracks to ``pc``
(its offers arrive as messages from ``@sfu``; :meth:`GroupCall.handle` answers them). docs/
protocol.md, "Group calls", has the messages for clients in other languages.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from yarl import URL

from .client import RtcClient, error_from_response, split_candidates
from .errors import RtcError
from .media._aiortc_compat import bundle_everything

__all__ = ["SFU", "GroupCall", "WhipSession", "ice_servers", "publish_whip", "watch_whep"]

log = logging.getLogger(__name__)

#: The server peer that forwards a room's media.
SFU = "@sfu"


def ice_servers(client: RtcClient) -> list[RTCIceServer]:
    """The ICE servers the server handed ``client`` (its connect answer), for aiortc."""
    return [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in client.ice_servers]


class GroupCall:
    """One member's side of a room's group call through the server (see the module's doc)."""

    def __init__(self, client: RtcClient, pc: RTCPeerConnection | None = None, *, server_peer: str = SFU) -> None:
        """``pc`` (a new one when None, with the client's ICE servers) sends what you add to it.
        It is made ``max-bundle`` whatever it was made with: the server adds sections to it as
        members come, and aiortc's default policy loses a section when an offer adds two of a kind
        (``_aiortc_compat.bundle_everything``)."""
        self.client = client
        if pc is None:
            configuration = RTCConfiguration(iceServers=ice_servers(client), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
            pc = RTCPeerConnection(configuration)
        elif not bundle_everything(pc):
            log.warning("this aiortc is not the checked one: make the GroupCall's peer connection max-bundle yourself")
        self.pc = pc
        self.server_peer = server_peer
        self.session_id: str | None = None
        #: mid -> {"peerId", "kind", "publicationId"}: whose media each received track carries.
        self.tracks: dict[str, dict[str, Any]] = {}
        self.joined = asyncio.Event()
        self.error: Exception | None = None
        self.offers = 0  # offers from the server answered
        self.left = False

    async def join(self, *, receive_slots: bool = True, **options: Any) -> None:
        """Offer what ``pc`` sends (and a data channel, if it has one) to the server; ``options``
        go with the offer (``record=True``...). The answer arrives as a message: :meth:`handle`.

        With ``receive_slots`` the offer also has a receive-only section per track the call
        publishes now (the room's snapshot lists them): the server's answer puts those tracks on
        them, so they come without a renegotiation (docs/protocol.md, "Group calls")."""
        if receive_slots:
            for kind in await self._published_kinds():
                self.pc.addTransceiver(kind, direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp, candidates = split_candidates(self.pc.localDescription.sdp)
        await self.client.signal({"type": "offer", "payload": {"sdp": sdp, **options}}, to=self.server_peer)
        for candidate in candidates:
            await self.client.signal({"type": "candidate", "payload": candidate}, to=self.server_peer)
        await self.client.signal({"type": "candidate", "payload": None}, to=self.server_peer)

    async def _published_kinds(self) -> list[str]:
        """The kind of every track the room's other members publish now (none when the snapshot
        cannot be had: the server then sends them by renegotiation, as it always can)."""
        try:
            snapshot = await self.client.snapshot()
        except (RtcError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.info("no room snapshot before joining the call (%s): its tracks come by renegotiation", exc)
            return []
        publishers = (snapshot.get("media") or {}).get("publishers") or []
        return [
            track["kind"]
            for publisher in publishers
            if publisher.get("peerId") != self.client.peer_id
            for track in publisher.get("tracks") or []
            if track.get("kind") in ("audio", "video")
        ]

    async def handle(self, message: dict[str, Any]) -> bool:
        """Handle ``message`` if it belongs to the call (True), else leave it to the caller."""
        if message.get("type") == "error":
            error = message.get("error") or {}
            if error.get("fromPeerId") != self.server_peer:
                return False
            self.error = error_from_response(400, message)
            log.warning("%s refused: %s", self.server_peer, error.get("message"))
            self.joined.set()
            return True
        if message.get("type") != "signal" or message.get("fromPeerId") != self.server_peer:
            return False
        signal = message.get("signal") or {}
        payload = signal.get("payload") or {}
        kind = signal.get("type")
        if kind == "answer":
            self.session_id = payload.get("sessionId")
            self.tracks = dict(payload.get("tracks") or {})
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type="answer"))
            self.joined.set()
        elif kind == "offer":
            if self.left or self.session_id is None or payload.get("sessionId") != self.session_id:
                return True  # an offer of an earlier session of ours (it ended as we left): not ours
            self.tracks = dict(payload.get("tracks") or {})
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            answer = {"sdp": self.pc.localDescription.sdp, "sessionId": self.session_id}
            await self.client.signal({"type": "answer", "payload": answer}, to=self.server_peer)
            self.offers += 1
        elif kind == "bye" and payload.get("sessionId") in (None, self.session_id):
            self.tracks = {}
        return True

    def who(self, track: MediaStreamTrack) -> dict[str, Any] | None:
        """Whose media a received track carries (``peerId``, ``kind``, ``publicationId``)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track and transceiver.mid is not None:
                return self.tracks.get(transceiver.mid)
        return None

    async def leave(self) -> None:
        """End this member's part of the call (the peer connection is yours to close)."""
        self.left = True
        await self.client.signal({"type": "bye", "payload": None}, to=self.server_peer)


# -- WHIP and WHEP -----------------------------------------------------------------------------------


@dataclass
class WhipSession:
    """A WHIP publisher's or a WHEP viewer's session on the server: ``close()`` ends it (DELETE)."""

    location: str  # absolute URL of the resource
    session_id: str
    pc: RTCPeerConnection
    _http: aiohttp.ClientSession
    _headers: dict[str, str]

    async def close(self) -> None:
        """DELETE the resource (the server ends the session), then close the peer connection."""
        try:
            async with self._http.delete(self.location, headers=self._headers):
                pass
        except aiohttp.ClientError:
            log.debug("DELETE %s failed; closing the peer connection anyway", self.location)
        finally:
            await self.pc.close()


async def _post_sdp(
    http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection, token: str | None
) -> tuple[str, str, dict[str, str]]:
    """Offer ``pc``'s description (all candidates in it) to ``url``; apply the answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(
        url, data=pc.localDescription.sdp, headers={**headers, "Content-Type": "application/sdp"}
    ) as resp:
        body = await resp.text()
        if resp.status != 201:
            try:
                error = await resp.json(content_type=None)
            except ValueError:
                error = None
            raise error_from_response(resp.status, error, resp.headers.get("Retry-After"))
        location = str(resp.url.join(URL(resp.headers["Location"])))
        session_id = resp.headers.get("X-Session-Id", location.rstrip("/").rsplit("/", 1)[-1])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location, session_id, headers


async def publish_whip(
    http: aiohttp.ClientSession,
    base_url: str,
    pc: RTCPeerConnection,
    *,
    mode: str = "sfu",
    token: str | None = None,
    **options: str,
) -> WhipSession:
    """Publish what ``pc`` sends over WHIP (``POST {base_url}/whip?mode=...``); ``mode="sfu"``
    makes it watchable over WHEP (:func:`watch_whep`), ``record="true"`` records it too."""
    url = URL(base_url.rstrip("/") + "/whip").with_query({"mode": mode, **options})
    location, session_id, headers = await _post_sdp(http, str(url), pc, token)
    return WhipSession(location, session_id, pc, http, headers)


async def watch_whep(
    http: aiohttp.ClientSession,
    base_url: str,
    session_id: str,
    pc: RTCPeerConnection | None = None,
    *,
    token: str | None = None,
) -> WhipSession:
    """Watch the WHIP session ``session_id`` over WHEP: a receive-only offer from ``pc`` (a new
    one receiving audio and video when None). Its ``track`` events fire while the answer is
    applied, before this returns: give a ``pc`` with the handler on to see them. The viewer's
    session ends with the publisher's (the server closes the connection)."""
    made = pc is None
    if pc is None:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
    try:
        location, viewer_id, headers = await _post_sdp(http, f"{base_url.rstrip('/')}/whep/{session_id}", pc, token)
    except BaseException:
        if made:  # ours: its sockets must not outlive the refusal (yours stays yours to close)
            await pc.close()
        raise
    return WhipSession(location, viewer_id, pc, http, headers)
