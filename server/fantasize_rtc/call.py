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
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from .client import RtcClient, error_from_response, split_candidates

__all__ = ["SFU", "GroupCall"]

log = logging.getLogger(__name__)

#: The server peer that forwards a room's media.
SFU = "@sfu"


class GroupCall:
    """One member's side of a room's group call through the server (see the module's doc)."""

    def __init__(self, client: RtcClient, pc: RTCPeerConnection, *, server_peer: str = SFU) -> None:
        self.client = client
        self.pc = pc
        self.server_peer = server_peer
        self.session_id: str | None = None
        #: mid -> {"peerId", "kind", "publicationId"}: whose media each received track carries.
        self.tracks: dict[str, dict[str, Any]] = {}
        self.joined = asyncio.Event()
        self.error: Exception | None = None
        self.offers = 0  # offers from the server answered
        self.left = False

    async def join(self, **options: Any) -> None:
        """Offer what ``pc`` sends (and a data channel, if it has one) to the server; ``options``
        go with the offer (``record=True``...). The answer arrives as a message: :meth:`handle`."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp, candidates = split_candidates(self.pc.localDescription.sdp)
        await self.client.signal({"type": "offer", "payload": {"sdp": sdp, **options}}, to=self.server_peer)
        for candidate in candidates:
            await self.client.signal({"type": "candidate", "payload": candidate}, to=self.server_peer)
        await self.client.signal({"type": "candidate", "payload": None}, to=self.server_peer)

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
